"""Layer directories stacked by cdisk with overlay's rules, on directories written here as an overlay store
holds them (whiteouts are 0:0 character devices, opaque directories carry an xattr): no podman needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdisk.core.disk.anywhere import MAX_DEPTH, Sniffed, search
from cdisk.core.errors import LayerDirsUnusable, TooManyEntries
from cdisk.core.tree.layer_dirs import LayerDirsTree
from cdisk.core.tree.merged import DIR, FILE, SYMLINK, resolve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root to write")


def _file(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


@pytest.fixture
def store(tmp_path: Path) -> LayerDirsTree:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _file(lower / "disk" / "a.qcow2", b"lower a")
    _file(lower / "disk" / "gone.qcow2")
    _file(lower / "disk" / "replaced" / "inside")
    _file(lower / "opaque" / "hidden")
    _file(lower / "merged" / "from-lower")
    _file(upper / "disk" / "b.qcow2", b"upper b")
    _whiteout(upper / "disk" / "gone.qcow2")
    _file(upper / "disk" / "replaced", b"now a file")
    _file(upper / "opaque" / "shown")
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    _file(upper / "merged" / "from-upper")
    (upper / "disk" / "link.qcow2").symlink_to("/disk/a.qcow2")
    return LayerDirsTree([str(upper), str(lower)])


def test_the_merged_view_follows_overlay(store: LayerDirsTree) -> None:
    assert store.children("disk") == ["a.qcow2", "b.qcow2", "link.qcow2", "replaced"]
    assert store.children("opaque") == ["shown"]
    assert store.children("merged") == ["from-lower", "from-upper"]
    assert store.lookup("disk/gone.qcow2") is None
    assert store.lookup("disk/replaced/inside") is None
    assert store.lookup("opaque/hidden") is None
    replaced = store.lookup("disk/replaced")
    assert replaced is not None and (replaced.kind, replaced.layer) == (FILE, 0)
    lower = store.lookup("disk/a.qcow2")
    assert lower is not None and (lower.kind, lower.layer, lower.size) == (FILE, 1, 7)
    link = store.lookup("disk/link.qcow2")
    assert link is not None and (link.kind, link.linkname) == (SYMLINK, "/disk/a.qcow2")
    assert store.lookup("") is not None and store.lookup("merged").kind == DIR  # type: ignore[union-attr]


def test_a_disk_opens_in_the_layer_that_holds_it(store: LayerDirsTree) -> None:
    member = resolve(store, "/disk/link.qcow2")  # an absolute link, taken inside the image
    fd = store.open_disk(member)
    try:
        assert os.pread(fd, 100, 0) == b"lower a"
    finally:
        os.close(fd)


@pytest.mark.parametrize("escape", ["/etc", "../../..", "/"])
def test_links_never_reach_the_host(tmp_path: Path, escape: str) -> None:
    layer = tmp_path / "layer"
    _file(layer / "disk" / "d.qcow2")
    (layer / "disk" / "out").symlink_to(escape)
    tree = LayerDirsTree([str(layer)])
    assert tree.children("disk/out") == []
    assert tree.lookup("disk/out/passwd") is None


def test_what_cdisk_cannot_vouch_for_is_handed_to_the_mount(tmp_path: Path) -> None:
    aufs = tmp_path / "aufs"
    _file(aufs / "disk" / ".wh.old.qcow2")
    with pytest.raises(LayerDirsUnusable, match="AUFS-style whiteout"):
        LayerDirsTree([str(aufs)]).children("disk")
    meta = tmp_path / "meta"
    _file(meta / "disk" / "d.qcow2")
    os.setxattr(meta / "disk" / "d.qcow2", "trusted.overlay.metacopy", b"")
    tree = LayerDirsTree([str(meta)])
    member = tree.lookup("disk/d.qcow2")
    assert member is not None
    with pytest.raises(LayerDirsUnusable, match="metacopy"):
        tree.open_disk(member)
    redirect = tmp_path / "redirect"
    _file(redirect / "disk" / "d.qcow2")
    os.setxattr(redirect / "disk", "trusted.overlay.redirect", b"/elsewhere")
    with pytest.raises(LayerDirsUnusable, match="redirects"):
        LayerDirsTree([str(redirect)]).lookup("disk/d.qcow2")


def test_a_disk_swapped_after_it_was_looked_at_is_refused(store: LayerDirsTree, tmp_path: Path) -> None:
    from cdisk.core.errors import UnsafeImageError

    member = store.lookup("disk/b.qcow2")
    assert member is not None
    # Another file renamed over it (made while the first still exists, so it cannot reuse its inode).
    _file(tmp_path / "upper" / "disk" / "new", b"swapped")
    os.replace(tmp_path / "upper" / "disk" / "new", tmp_path / "upper" / "disk" / "b.qcow2")
    with pytest.raises(UnsafeImageError, match="changed while cdisk looked at it"):
        store.open_disk(member)


def test_members_are_the_merged_view_each_as_lookup_finds_it(store: LayerDirsTree) -> None:
    # One call a directory (the search for disks walks the image by it): what children and lookup say.
    for directory in ("", "disk", "opaque", "merged"):
        members = store.members(directory)
        assert [m.path.rpartition("/")[2] for m in members] == store.children(directory)
        assert members == [store.lookup(m.path) for m in members]
    assert store.identity(store.members("disk")[0]) is not None


def test_a_member_found_by_members_opens(store: LayerDirsTree) -> None:
    [member] = [m for m in store.members("disk") if m.path == "disk/b.qcow2"]
    fresh = LayerDirsTree(store.dirs)  # nothing looked up but through members
    [member] = [m for m in fresh.members("disk") if m.path == "disk/b.qcow2"]
    fd = fresh.open_disk(member)
    try:
        assert os.pread(fd, 100, 0) == b"upper b"
    finally:
        os.close(fd)


def test_an_aufs_whiteout_met_by_members_is_handed_to_the_mount(tmp_path: Path) -> None:
    _file(tmp_path / "top" / "etc" / ".wh.motd", b"")
    with pytest.raises(LayerDirsUnusable, match="AUFS-style whiteout"):
        LayerDirsTree([str(tmp_path / "top")]).members("etc")


def _deep(top: Path, depth: int, name: str = "disk.qcow2", data: bytes = b"QFI\xfb" + bytes(2 << 20)) -> str:
    """A file under `depth` directories a/a/…/a of the layer directory `top`; its path in the image."""
    path = "/".join(["a"] * depth + [name])
    _file(top / path, data)
    return path


def test_a_deep_chain_in_every_layer_stops_at_the_search_bound(tmp_path: Path) -> None:
    # The review's crafted store: each layer a chain of directories far deeper than any disk sits (each listing
    # walked from the layers' roots again made the search cost the square of the depth: 13.6 s for 3 layers of
    # 600). A disk just inside the bound is found, one just past it and one at the bottom are not, and the
    # answer says where the search stopped.
    layers = [tmp_path / f"layer{n}" for n in range(3)]
    for layer in layers:
        _deep(layer, 600, "end", b"")
    inside = _deep(layers[1], MAX_DEPTH - 1)
    _deep(layers[2], MAX_DEPTH, "past.qcow2")
    _deep(layers[0], 600, "bottom.qcow2")
    tree = LayerDirsTree([str(layer) for layer in layers])
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    assert [d.path for d in found.found] == [f"/{inside}"]
    assert found.stopped == f"the search stops after {MAX_DEPTH} levels"
    # Read: the root and MAX_DEPTH - 1 levels, each directory in each of the three layers, with one name in each
    # (and the disk): nothing below the bound was listed.
    assert tree.read == 3 * 2 * MAX_DEPTH + 1


def test_a_huge_directory_is_not_listed_past_the_limit(tmp_path: Path) -> None:
    for n in range(50):
        _file(tmp_path / "top" / "many" / f"{n:02}")
    _file(tmp_path / "low" / "many" / "zz")
    tree = LayerDirsTree([str(tmp_path / "top"), str(tmp_path / "low")])
    with pytest.raises(TooManyEntries):
        tree.members("many", 40)  # the top layer's directory alone holds more: not one name stat'ed
    assert tree.read == 0 and not tree.seen
    with pytest.raises(TooManyEntries):
        tree.members("many", 52)  # each layer's directory and its names: 51 + 2
    assert len(tree.members("many", 53)) == 51 and tree.read == 53


def test_hard_links_in_layer_directories_are_one_file(tmp_path: Path) -> None:
    _file(tmp_path / "top" / "image" / "vm.qcow2", b"QFI\xfb" + bytes(2 << 20))
    for n in range(3):
        os.link(tmp_path / "top" / "image" / "vm.qcow2", tmp_path / "top" / "image" / f"link{n}.qcow2")
    asked: list[str] = []
    found = search(LayerDirsTree([str(tmp_path / "top")]),
                   lambda path, member: asked.append(path) or Sniffed("qcow2"))  # type: ignore[func-returns-value]
    assert len(asked) == 1 and len(found.found) == 4


def test_a_directory_walked_through_again_keeps_what_was_judged(store: LayerDirsTree) -> None:
    # The second walk opens the layers found the first time (no stat, no xattr): the same merged view.
    first = [store.members(d) for d in ("", "disk", "opaque", "merged")]
    assert [store.members(d) for d in ("", "disk", "opaque", "merged")] == first
    assert [m.path for m in first[2]] == ["opaque/shown"]
