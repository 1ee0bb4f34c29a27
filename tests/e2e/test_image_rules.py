"""Which disk an image holds, end to end: merged-view rules and symlink/hard-link handling on real images."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Convert, Images, assert_one_line_error, same_disk
from tests.images import Entry


@pytest.fixture
def two_disks(images: Images) -> tuple[bytes, bytes, Path, Path]:
    a, b = images.disk("a.qcow2", pattern=0xAA), images.disk("b.qcow2", pattern=0xBB)
    return a.read_bytes(), b.read_bytes(), a, b


def converts_to(convert: Convert, name: str, target: Path, expected: Path, *extra: str) -> None:
    """Converting `name` succeeds and gives exactly the qcow2 disk `expected`."""
    result = convert(*extra, name, target)
    assert result.code == 0, result.err
    assert same_disk(expected, "qcow2", target, "raw")


def test_whiteout_hides_a_lower_disk(convert: Convert, images: Images, tmp_path: Path, two_disks: tuple) -> None:
    a, b, a_path, _ = two_disks
    name = images.layers([Entry("disk/a.qcow2", a), Entry("disk/b.qcow2", b)], [Entry("disk/.wh.b.qcow2", b"")])
    converts_to(convert, name, tmp_path / "out.raw", a_path)


def test_opaque_directory_hides_everything_below(
    convert: Convert, images: Images, tmp_path: Path, two_disks: tuple
) -> None:
    a, b, _, b_path = two_disks
    name = images.layers(
        [Entry("disk/a.qcow2", a), Entry("disk/old.qcow2", a)],
        [Entry("disk", directory=True), Entry("disk/.wh..wh..opq", b""), Entry("disk/b.qcow2", b)],
    )
    converts_to(convert, name, tmp_path / "out.raw", b_path)


def test_upper_layer_replaces_the_disk(convert: Convert, images: Images, tmp_path: Path, two_disks: tuple) -> None:
    a, b, _, b_path = two_disks
    name = images.layers([Entry("disk/disk.qcow2", a)], [Entry("disk/disk.qcow2", b)])
    converts_to(convert, name, tmp_path / "out.raw", b_path)


@pytest.mark.parametrize("data_at", ["data/real.qcow2", "zz/real.qcow2"])
def test_hard_link_is_followed_to_its_data(
    convert: Convert, images: Images, tmp_path: Path, two_disks: tuple, data_at: str
) -> None:
    # podman save writes whichever name it meets first as the data and the other as the link.
    a, _, a_path, _ = two_disks
    name = images.layers([Entry(data_at, a), Entry("disk/x.qcow2", hardlink=data_at)])
    converts_to(convert, name, tmp_path / "out.raw", a_path)


@pytest.mark.parametrize("link", ["/data/real.qcow2", "../data/real.qcow2", "/data/via/../real.qcow2"])
def test_symlink_inside_the_image_is_followed(
    convert: Convert, images: Images, tmp_path: Path, two_disks: tuple, link: str
) -> None:
    a, _, a_path, _ = two_disks
    name = images.layers(
        [Entry("data/real.qcow2", a), Entry("data/via", directory=True), Entry("disk/x.qcow2", symlink=link)]
    )
    converts_to(convert, name, tmp_path / "out.raw", a_path)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ([Entry("disk/x.qcow2", symlink="/etc/hostname")], "not in the image"),
        ([Entry("disk/x.qcow2", symlink="../../../../etc/hostname")], "out of the image"),
        (
            [Entry("disk/x.qcow2", symlink="/loop/a"), Entry("loop/a", symlink="b"), Entry("loop/b", symlink="a")],
            "too many symlinks",
        ),
    ],
    ids=["absolute-host-path", "dot-dot", "loop"],
)
def test_symlink_out_of_the_image_is_refused(
    convert: Convert, images: Images, tmp_path: Path, entries: list, says: str
) -> None:
    result = convert("-q", images.layers(entries), tmp_path / "out.raw")
    assert_one_line_error(result, 5, says)
    assert list(tmp_path.iterdir()) == []


def test_cdi_disk_downloaded(convert: Convert, images: Images, tmp_path: Path, two_disks: tuple) -> None:
    a, _, a_path, _ = two_disks
    name = images.layers([Entry("disk/downloaded", a)])
    converts_to(convert, name, tmp_path / "out.raw", a_path)


def test_dotfiles_and_directories_are_not_candidates(
    convert: Convert, images: Images, tmp_path: Path, two_disks: tuple
) -> None:
    a, b, a_path, _ = two_disks
    name = images.layers([Entry("disk/.hidden.qcow2", b), Entry("disk/sub/b.qcow2", b), Entry("disk/a.qcow2", a)])
    converts_to(convert, name, tmp_path / "out.raw", a_path)


def test_several_disks_need_path(convert: Convert, images: Images, tmp_path: Path, two_disks: tuple) -> None:
    a, b, _, b_path = two_disks
    name = images.layers([Entry("disk/a.qcow2", a), Entry("disk/b.qcow2", b)])
    result = convert("-q", name, tmp_path / "out.raw")
    assert result.code == 4
    assert "/disk/a.qcow2, /disk/b.qcow2" in result.err and "--path" in result.err
    converts_to(convert, name, tmp_path / "out.raw", b_path, "--path", "/disk/b.qcow2")


def test_no_disk_lists_what_is_there(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.layers([Entry("disk/.keep", b""), Entry("other/file", b"x")])
    result = convert("-q", name, tmp_path / "out.raw")
    assert result.code == 4
    assert "no disk file directly under /disk/ (found: /disk/.keep)" in result.err


def test_path_to_a_missing_file(convert: Convert, images: Images, tmp_path: Path, two_disks: tuple) -> None:
    name = images.layers([Entry("disk/a.qcow2", two_disks[0])])
    result = convert("-q", "--path", "/disk/nope.qcow2", name, tmp_path / "out.raw")
    assert result.code == 4 and "/disk/nope.qcow2 does not exist in the image" in result.err
