"""Which files a compressed layer's one pass copies out, before the image's tree is known."""

from __future__ import annotations

import pytest

from cdisk.core.disk.wanted import COPIES, HEAD, Wanted


@pytest.mark.parametrize("asked", ["/disk/vm.img", "disk/vm.img", "/x/../disk/./vm.img", "../../disk/vm.img"])
def test_path_is_the_one_file_it_names_cleaned_as_go_cleans_it(asked: str) -> None:
    wanted = Wanted.disk(asked)
    assert wanted.path("disk/vm.img") and not wanted.path("disk/other.img") and not wanted.path("vm.img")
    assert (wanted.limit, wanted.copies) == (None, 1)


def test_convert_copies_one_candidate_serve_all_every_one_ls_their_heads() -> None:
    convert, every, heads = Wanted.disk(None), Wanted.disk(None, every=True), Wanted.heads()
    for wanted in (convert, every, heads):
        assert wanted.path("disk/a.img") and not wanted.path("disk/sub/a.img") and not wanted.path("a.img")
    assert (convert.copies, every.copies, heads.copies) == (1, COPIES, COPIES)
    assert (convert.limit, every.limit, heads.limit) == (None, None, HEAD)


def test_a_second_pass_asks_by_offset_alone() -> None:
    again = Wanted.at(4096, HEAD)
    assert again.offsets == frozenset({4096}) and again.limit == HEAD and not again.path("disk/a.img")


def test_ls_path_copies_the_head_of_the_one_file_it_names() -> None:
    wanted = Wanted.heads("/image/../data/vm.img")
    assert wanted.path("data/vm.img") and not wanted.path("disk/a.img")
    assert (wanted.limit, wanted.copies) == (HEAD, 1)
