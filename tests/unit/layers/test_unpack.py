"""A layer tar's members as containers/storage leaves them on disk: names cleaned, later entries replacing
earlier ones, hard links, whiteouts, and the constructs refused; on tars written byte by byte (pure).
"""

from __future__ import annotations

import io

import pytest

from cdisk.core.errors import LayerRefused
from cdisk.core.layers.unpack import members_from_tar
from cdisk.core.tar_headers import TarEntry, read_entries
from cdisk.core.tree.merged import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree
from tests.images import TAR_END, pax_header, tar_member


def layer(*members: bytes, index: int = 0) -> list[LayerMember]:
    raw = b"".join(members) + TAR_END
    return members_from_tar(read_entries(io.BytesIO(raw), len(raw)), index)


def paths(members: list[LayerMember]) -> list[tuple[str, str]]:
    return [(m.path, m.kind) for m in members]


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
