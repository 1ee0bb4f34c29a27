"""The merged view and in-image path resolution, on tar metadata alone (pure)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from cdisk.core.errors import DiskNotFoundError, LayerRefused, UnsafeImageError
from cdisk.core.layers.unpack import members_from_tar
from cdisk.core.paths import go_clean
from cdisk.core.tar_headers import TarEntry, read_entries
from cdisk.core.tree.merged import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree, resolve
from tests.images import TAR_END, pax_header, tar_member


def f(path: str, layer: int = 0, size: int = 1) -> LayerMember:
    return LayerMember(path, FILE, layer, offset=512 * (layer + 1), size=size)


def test_whiteout_removes_a_file_and_a_whole_directory() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/b"), f("keep/x"), f("gone/y/z")], [f("disk/.wh.b", 1), f(".wh.gone", 1)]])
    assert sorted(tree.entries) == ["disk", "disk/a", "keep", "keep/x"]
    assert tree.lookup("gone") is None and tree.lookup("gone/y/z") is None


def test_opaque_directory_keeps_only_its_own_layer() -> None:
    tree = MergedTree(
        [
            [f("disk/old"), f("disk/sub/deep")],
            [LayerMember("disk", DIR, 1), f("disk/.wh..wh..opq", 1), f("disk/new", 1)],
        ]
    )
    assert sorted(tree.entries) == ["disk", "disk/new"]


def test_a_whiteouts_parent_is_a_directory_of_its_layer() -> None:
    # storage makes D to hold D/.wh.x: a directory of the upper layer hides a lower file D.
    tree = MergedTree([[f("disk")], [f("disk/.wh.x", 1)]])
    assert tree.lookup("disk") == LayerMember("disk", DIR, 1) and tree.children("disk") == []


def test_whiteouts_do_not_hide_entries_of_their_own_layer() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/.wh.a")]])
    assert tree.lookup("disk/a") == f("disk/a")


def test_later_layer_replaces_and_file_replaces_directory() -> None:
    tree = MergedTree([[f("disk/a", 0, size=1), f("dir/child")], [f("disk/a", 1, size=2), f("dir", 1)]])
    assert tree.lookup("disk/a") == f("disk/a", 1, size=2)
    assert tree.lookup("dir") == f("dir", 1) and tree.lookup("dir/child") is None


def test_path_under_a_lower_file_makes_it_a_directory() -> None:
    tree = MergedTree([[f("x")], [f("x/y", 1)]])
    assert tree.lookup("x") == LayerMember("x", DIR, 1) and tree.lookup("x/y") == f("x/y", 1)


def test_implicit_directories_and_children() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/b"), f("disk/sub/c")]])
    assert tree.lookup("disk") == LayerMember("disk", DIR)
    assert tree.children("disk") == ["a", "b", "sub"]
    assert tree.children("") == ["disk"]


def link(path: str, target: str) -> LayerMember:
    return LayerMember(path, SYMLINK, linkname=target)


@pytest.mark.parametrize("target", ["/data/real", "../data/real", "/data/./x/../real", "real2"])
def test_resolve_follows_links_inside(target: str) -> None:
    tree = MergedTree(
        [[f("data/real"), LayerMember("data/x", DIR), link("disk/real2", "/data/real"), link("disk/d", target)]]
    )
    assert resolve(tree, "/disk/d") == f("data/real")


def test_resolve_through_a_linked_directory() -> None:
    tree = MergedTree([[f("store/v1/disk.img"), link("disk", "store/v1")]])
    assert resolve(tree, "disk/disk.img") == f("store/v1/disk.img")


@pytest.mark.parametrize(
    ("entries", "error", "says"),
    [
        ([link("disk/d", "/etc/shadow")], UnsafeImageError, "symlink /disk/d points to /etc/shadow"),
        ([link("disk/d", "../../etc/shadow")], UnsafeImageError, "out of the image"),
        ([link("disk/d", "/a"), link("a", "b"), link("b", "a")], UnsafeImageError, "too many symlinks"),
        ([f("disk/x")], DiskNotFoundError, "/disk/d does not exist"),
        (
            [
                f("disk"),
            ],
            DiskNotFoundError,
            "/disk is not a directory",
        ),
    ],
)
def test_resolve_refuses(entries: list[LayerMember], error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        resolve(MergedTree([entries]), "/disk/d")


def layer(*members: bytes, index: int = 0) -> list[LayerMember]:
    raw = b"".join(members) + TAR_END
    return members_from_tar(read_entries(io.BytesIO(raw), len(raw)), index)


def paths(members: list[LayerMember]) -> list[tuple[str, str]]:
    return [(m.path, m.kind) for m in members]


@pytest.mark.parametrize(
    ("name", "clean"),
    [("x/../disk/a", "disk/a"), ("/disk/a", "/disk/a"), ("./disk//a/", "disk/a"), ("/../disk/a", "/disk/a"),
     ("a/../..", ".."), ("", "."), ("/", "/"), ("../x", "../x")],
)
def test_go_clean(name: str, clean: str) -> None:
    assert go_clean(name) == clean


@pytest.mark.parametrize("name", ["x/../disk/a", "/disk/a", "./disk/./a", "/../disk/a", "disk/sub/../a"])
def test_names_are_cleaned_as_storage_cleans_them(name: str) -> None:
    members = layer(tar_member(name, b"abc"))
    assert members[-1] == LayerMember("disk/a", FILE, 0, offset=512, size=3)


def test_cleaned_whiteout_hides_a_lower_disk() -> None:
    lower = layer(tar_member("disk/a", b"1"), tar_member("disk/b", b"2"))
    upper = layer(tar_member("x/../disk/.wh.b"), index=1)
    assert MergedTree([lower, upper]).children("disk") == ["a"]


def test_layer_contents_as_storage_leaves_them() -> None:
    members = layer(
        tar_member("data/real", b"12345"),
        tar_member("disk/x", kind=b"1", linkname="./data/real"),
        tar_member("disk/l", kind=b"2", linkname="../data/real"),
        tar_member("disk/h", kind=b"1", linkname="disk/l"),  # a hard link to a symlink is that symlink
        tar_member("dev/null", kind=b"3", devices=(1, 3)),
        tar_member("gone/.wh.file"),
        tar_member("opq/.wh..wh..opq"),
        tar_member("./", kind=b"5"),
        index=3,
    )
    assert members == [
        LayerMember("data", DIR, 3),
        LayerMember("data/real", FILE, 3, offset=512, size=5),
        LayerMember("disk", DIR, 3),
        LayerMember("disk/x", FILE, 3, offset=512, size=5),
        LayerMember("disk/l", SYMLINK, 3, linkname="../data/real"),
        LayerMember("disk/h", SYMLINK, 3, linkname="../data/real"),
        LayerMember("dev", DIR, 3),
        LayerMember("dev/null", OTHER, 3),
        LayerMember("gone", DIR, 3),
        LayerMember("gone/.wh.file", OTHER, 3),
        LayerMember("opq", DIR, 3),
        LayerMember("opq/.wh..wh..opq", OTHER, 3),
    ]


def test_later_entry_replaces_within_a_layer() -> None:
    # storage removes what is at the path (a whole directory) unless both are directories.
    members = layer(tar_member("d/a", b"1"), tar_member("/d", b"22"), tar_member("e/", kind=b"5"),
                    tar_member("e/x", b"3"), tar_member("/e", kind=b"5"))
    assert paths(members) == [("d", FILE), ("e", DIR), ("e/x", FILE)]
    assert members[0].offset == 1536


def test_hard_link_keeps_the_data_its_target_had() -> None:
    members = layer(tar_member("a", b"old"), tar_member("b", kind=b"1", linkname="a"), tar_member("/a", b"new!"))
    assert [(m.path, m.offset, m.size) for m in members] == [("b", 512, 3), ("a", 2048, 4)]


def test_whiteouts_under_a_whiteout_or_a_file_change_nothing() -> None:
    # What `rm -rf /d/e` gives in some builders: mknod fails with ENOTDIR and storage ignores it.
    assert paths(layer(tar_member(".wh.d"), tar_member("d/.wh.e"), tar_member("f"), tar_member("f/.wh.x"))) == [
        (".wh.d", OTHER),
        ("f", FILE),
    ]


def test_global_header_with_a_fresh_top_level_name_changes_nothing() -> None:
    members = layer(tar_member("a", b"1"), pax_header([(b"comment", b"x")], b"g", b"pax_global_header"),
                    pax_header([(b"comment", b"x")], b"g", b"././@PaxHeader"))
    assert paths(members) == [("a", FILE)]


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([tar_member("../evil", b"x")], "climbs out"),
        ([tar_member("a/../../evil", b"x")], "climbs out"),
        ([tar_member("./", b"x")], "non-directory entry for the image root"),
        ([tar_member("f", b"x"), tar_member("f/g", b"y")], "under a file of the same layer"),
        ([tar_member("d", kind=b"2", linkname="data"), tar_member("d/disk", b"y")], "under a symlink"),
        ([tar_member("d", kind=b"2", linkname="data"), tar_member("d/.wh.x")], "under a symlink"),
        ([tar_member(".wh.d"), tar_member("d/x", b"y")], "under a whiteout"),
        ([tar_member(".wh.d"), tar_member("d/.wh..wh..opq")], "under a whiteout"),
        ([tar_member("a", b"1"), tar_member(".wh.a")], "whiteout for a path the same layer holds"),
        ([tar_member("d/x", b"1"), tar_member(".wh.d")], "whiteout for a path the same layer holds"),
        ([tar_member(".wh.a"), tar_member("a", b"1")], "the same layer whited out"),
        ([tar_member(".wh.d"), tar_member("d/", kind=b"5")], "the same layer whited out"),
        ([tar_member(".wh..wh..opq")], "opaque marker for the image root"),
        ([tar_member(".wh..wh.plnk/x", b"1")], "through a .wh. directory"),
        ([tar_member(".wh..wh.aufs")], "AUFS metadata"),
        ([tar_member("d/.wh.")], "whiteout of nothing"),
        ([tar_member("b", kind=b"1", linkname="a")], "hard link to 'a'"),
        ([tar_member("a", b"1"), tar_member("b", kind=b"1", linkname="../a")], "outside the image"),
        ([tar_member("d/", kind=b"5"), tar_member("b", kind=b"1", linkname="d")], "does not hold as a file"),
        ([tar_member("a", b"1"), tar_member("/a", kind=b"1", linkname="a")], "does not hold as a file"),
        ([tar_member(".wh.a"), tar_member("b", kind=b"1", linkname="a")], "does not hold as a file"),
        ([tar_member("l", kind=b"2", linkname="d"), tar_member("d/a", b"1"), tar_member("b", kind=b"1",
                                                                                    linkname="l/a")],
         "does not hold as a file"),
        ([tar_member("l", kind=b"2")], "symlink to nothing"),
        ([tar_member("disk/b", kind=b"3")], "character device 0/0"),
        ([tar_member("disk/b", b"x", kind=b"7")], "tar type '7'"),
        ([tar_member("disk/b", kind=b"V")], "tar type 'V'"),
        ([pax_header([(b"path", b"x" * 256)]), tar_member("f")], "longer than Linux allows"),
        ([pax_header([(b"path", b"x/" * 2100)]), tar_member("f")], "longer than Linux allows"),
        ([tar_member("a/b", b"1"), pax_header([(b"c", b"x")], b"g", b"a")], "global header whose name"),
        # tar-split (podman's and docker's layer store) refuses a second entry of a cleaned name.
        ([tar_member("disk/a", b"1"), tar_member("disk/a", b"2")], "second entry of the same path"),
        ([tar_member("d", kind=b"5"), tar_member("d/", kind=b"5")], "second entry of the same path"),
        ([tar_member("./a", b"1"), tar_member("a//", b"2")], "second entry of the same path"),
        ([pax_header([(b"c", b"x")], b"g", b"g0"), pax_header([(b"c", b"y")], b"g", b"g0")],
         "second entry of the same path"),
        ([pax_header([(b"c", b"x")], b"g", b"disk/x")], "global header whose name"),
        ([pax_header([(b"c", b"x")], b"g", b".wh.disk")], "global header whose name"),
    ],
)
def test_refused_layer_constructs(members: list[bytes], says: str) -> None:
    with pytest.raises(LayerRefused, match=says):
        layer(*members)


def test_sparse_member_is_marked() -> None:
    records = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"disk/s.img")]
    [_, member] = layer(pax_header(records), tar_member("disk/GNUSparseFile.0/s.img", b"0\n"))
    assert (member.path, member.sparse) == ("disk/s.img", True)


def _whiteout_layers(files: int) -> list[list[LayerMember]]:
    """`files` files in 100 directories, then a layer whiting out every other one."""
    lower = [LayerMember(f"d{i % 100}/f{i}", FILE, 0, offset=512 * i, size=1) for i in range(files)]
    upper = [LayerMember(f"d{i % 100}/.wh.f{i}", OTHER, 1) for i in range(0, files, 2)]
    return [lower, upper]


def test_200k_entries_with_whiteouts() -> None:
    # 100k files and 50k whiteouts plus 50k file replacements: the former subtree removal scanned every
    # entry per whiteout (~10^10 steps, hours); this runs in about a second.
    lower, upper = _whiteout_layers(100_000)
    upper += [LayerMember(f"d{i % 100}/f{i}", FILE, 1, offset=7, size=2) for i in range(1, 100_000, 2)]
    tree = MergedTree([lower, upper])
    assert len(tree.entries) == 100 + 50_000
    assert tree.lookup("d1/f1") == LayerMember("d1/f1", FILE, 1, offset=7, size=2)
    assert tree.lookup("d0/f0") is None and tree.children("d0") == [] and len(tree.children("d3")) == 1000


def test_200k_entries_of_one_layer() -> None:
    # One layer of 100k files in 1000 directories, then 1000 entries replacing those directories, and
    # 99k symlinks: each replacement removes only its own subtree.
    entries = [TarEntry(f"d{i % 1000}/f{i}", "0", 0, 512 * i, 1) for i in range(100_000)]
    entries += [TarEntry(f"d{i}", "0", 0, 7, 1) for i in range(1000)]
    entries += [TarEntry(f"s/l{i}", "2", 0, 0, 0, linkname="x") for i in range(99_000)]
    members = members_from_tar(entries, 0)
    assert len(members) == 1000 + 1 + 99_000
    assert members[0] == LayerMember("d0", FILE, 0, offset=7, size=1)
    assert len(MergedTree([members]).children("s")) == 99_000


def _lines_run(work: Callable[[], Any]) -> int:
    """How many lines of cdisk.core.tree.merged `work` executes: a count of the work done, not a time."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename.endswith("layers.py"):
            count += event == "line"
            return trace
        return None

    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("lower_dir", [False, True], ids=["whiteouts", "directory-replacements"])
def test_merge_work_grows_linearly(lower_dir: bool) -> None:
    def layers(files: int) -> list[list[LayerMember]]:
        if not lower_dir:
            return _whiteout_layers(files)
        lower = [LayerMember(f"d{i}/f", FILE, 0) for i in range(files)]
        return [lower, [LayerMember(f"d{i}", FILE, 1) for i in range(0, files, 2)]]

    small = _lines_run(lambda: MergedTree(layers(1000)))
    large = _lines_run(lambda: MergedTree(layers(4000)))
    # Linear: 4 times the entries, about 4 times the lines; the former quadratic merge ran ~16 times as many.
    assert large < 6 * small
