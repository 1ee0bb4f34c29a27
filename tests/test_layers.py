"""The merged view and in-image path resolution, on tar metadata alone (pure)."""

from __future__ import annotations

import io
import tarfile

import pytest

from cdisk.core.errors import DiskNotFoundError, UnsafeImageError
from cdisk.core.layers import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree, members_from_tar, resolve


def f(path: str, layer: int = 0, size: int = 1) -> LayerMember:
    return LayerMember(path, FILE, layer, offset=512 * (layer + 1), size=size)


def test_whiteout_removes_a_file_and_a_whole_directory() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/b"), f("keep/x"), f("gone/y/z")], [f("disk/.wh.b", 1), f(".wh.gone", 1)]])
    assert sorted(tree.entries) == ["disk/a", "keep/x"]
    assert tree.lookup("gone") is None and tree.lookup("gone/y/z") is None


def test_opaque_directory_keeps_only_its_own_layer() -> None:
    tree = MergedTree(
        [
            [f("disk/old"), f("disk/sub/deep")],
            [LayerMember("disk", DIR, 1), f("disk/.wh..wh..opq", 1), f("disk/new", 1)],
        ]
    )
    assert sorted(tree.entries) == ["disk", "disk/new"]


def test_whiteouts_do_not_hide_entries_of_their_own_layer() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/.wh.a")]])
    assert tree.lookup("disk/a") == f("disk/a")


def test_later_layer_replaces_and_file_replaces_directory() -> None:
    tree = MergedTree([[f("disk/a", 0, size=1), f("dir/child")], [f("disk/a", 1, size=2), f("dir", 1)]])
    assert tree.lookup("disk/a") == f("disk/a", 1, size=2)
    assert tree.lookup("dir") == f("dir", 1) and tree.lookup("dir/child") is None


def test_path_under_a_lower_file_makes_it_a_directory() -> None:
    tree = MergedTree([[f("x")], [f("x/y", 1)]])
    assert tree.lookup("x") == LayerMember("x", DIR) and tree.lookup("x/y") == f("x/y", 1)


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


def _tar_bytes(*infos: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in infos:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _tar(*infos: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(_tar_bytes(*infos, fmt=fmt)), mode="r:")


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    return info


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_offsets_move_past_long_name_headers(fmt: int) -> None:
    # "a": header at 0, data at 512; the long name: an extra header and a block of name at 1024 and
    # 1536, its own header at 2048, data at 2560 — not where a fixed 512-byte header would put it.
    long_name = "disk/" + "ü" * 120 + ".qcow2"
    raw = _tar_bytes((_info("a", 3), b"abc"), (_info(long_name, 2), b"xy"), fmt=fmt)
    members = members_from_tar(_tar((_info("a", 3), b"abc"), (_info(long_name, 2), b"xy"), fmt=fmt), layer=0)
    assert members == [
        LayerMember("a", FILE, 0, offset=512, size=3),
        LayerMember(long_name, FILE, 0, offset=2560, size=2),
    ]
    assert raw[2560:2562] == b"xy"


def test_hard_link_carries_its_targets_data_and_a_dangling_one_is_other() -> None:
    members = members_from_tar(
        _tar(
            (_info("./data/real", 5), b"12345"),
            (_info("disk/x", kind=tarfile.LNKTYPE, linkname="./data/real"), None),
            (_info("disk/y", kind=tarfile.LNKTYPE, linkname="nowhere"), None),
        ),
        layer=3,
    )
    assert members[1] == LayerMember("disk/x", FILE, 3, offset=512, size=5)
    assert members[2] == LayerMember("disk/y", OTHER, 3, linkname="nowhere")


def test_names_climbing_out_are_dropped() -> None:
    members = members_from_tar(_tar((_info("../evil", 1), b"x"), (_info("ok", 1), b"y")), layer=0)
    assert [m.path for m in members] == ["ok"]


def test_sparse_member_is_marked() -> None:
    info = _info("disk/sparse.img", 4)
    tar = _tar((info, b"abcd"))
    members = tar.getmembers()
    members[0].sparse = [(0, 4)]  # what tarfile sets for a GNU sparse member: podman never writes one
    assert members_from_tar(members, layer=0)[0].sparse is True
