"""The mount method's view of an image root never reaches the host: the same trees on a real directory
(as `podman image mount` shows them) and as layer metadata (as the save method reads them) give the
same answers, and nothing of the host shows through. No podman needed: the "mount" is a directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdisk.core.disk.candidates import find_disk, list_candidates
from cdisk.core.errors import CdiskError, UnsafeImageError
from cdisk.core.tree.merged import DIR, FILE, SYMLINK, LayerMember, MergedTree, TooManyEntries
from cdisk.core.tree.mounted import MountedTree

# Names that exist on any Linux host, at the host's root and in its /etc: none may ever be reported.
HOST_NAMES = ("passwd", "hostname", "usr", "proc", "bin")
DATA = b"QFI\xfb" + bytes(60)


@dataclass(frozen=True)
class Node:
    path: str
    link: str | None = None
    directory: bool = False


def trees(root: Path, nodes: list[Node]) -> tuple[MountedTree, MergedTree]:
    """The same image as a directory on the host and as layer metadata."""
    root.mkdir()
    members = []
    for node in nodes:
        where = root / node.path
        if node.directory:
            where.mkdir(parents=True)
            members.append(LayerMember(node.path, DIR))
        elif node.link is not None:
            where.symlink_to(node.link)
            members.append(LayerMember(node.path, SYMLINK, linkname=node.link))
        else:
            where.write_bytes(DATA)
            members.append(LayerMember(node.path, FILE, offset=512, size=len(DATA)))
    return MountedTree(str(root)), MergedTree([members])


def answer(tree: MountedTree | MergedTree, path: str | None = None) -> tuple[str, str]:
    """What `convert` would say: the disk found (path, kind, size) or the error class and message."""
    try:
        found, member = find_disk(tree, path)
    except CdiskError as error:
        return type(error).__name__, error.message
    return "found", f"{found} {member.path} {member.kind} {member.size}"


CASES = {
    "disk links to the root": [Node("disk", "/")],
    "disk links to the root, image has a file named like a host directory": [Node("disk", "/"), Node("etc")],
    "disk links to a host directory the image lacks": [Node("disk", "/etc")],
    "disk links to a path nobody has": [Node("disk", "/nonexistent")],
    "disk climbs out": [Node("disk", "../..")],
    "disk climbs out through a link inside": [Node("a", directory=True), Node("a/up", "../.."), Node("disk", "a/up")],
    "a disk links to a host file": [Node("disk", directory=True), Node("disk/x", "/etc/passwd")],
    "nested links end on the host": [Node("disk", "a"), Node("a", "b"), Node("b", "/etc")],
    "disk links to the image's own /etc": [Node("etc", directory=True), Node("etc/vm.qcow2"), Node("disk", "/etc")],
    "disk under a symlinked dir that stays inside": [
        Node("images/x", directory=True), Node("images/x/vm.qcow2"), Node("disk", "images/x")],
    "disk links through .. inside": [Node("a/b", directory=True), Node("a/vm.qcow2"), Node("disk", "a/b/..")],
    "disk is a file": [Node("disk")],
    "disk holds only a directory link to the host": [Node("disk", directory=True), Node("disk/sub", "/usr")],
    "disk links to the host root through an absolute parent": [Node("disk", "/a/.."), Node("a", "/")],
    "a link loop": [Node("disk", "a"), Node("a", "disk")],
}


@pytest.mark.parametrize("nodes", CASES.values(), ids=CASES.keys())
def test_mounted_and_saved_views_agree(tmp_path: Path, nodes: list[Node]) -> None:
    mounted, merged = trees(tmp_path / "root", nodes)
    assert answer(mounted) == answer(merged)
    assert [(c.path, c.refusal) for c in list_candidates(mounted)] == \
        [(c.path, c.refusal) for c in list_candidates(merged)]
    said = " ".join(answer(mounted))
    # The image's own names and link texts may be quoted back; nothing else of the host may show.
    own = " ".join(f"{node.path} {node.link or ''}" for node in nodes)
    assert not [name for name in HOST_NAMES if name in said and name not in own], said


@pytest.mark.parametrize("path", ["/disk/x", "/disk/../../etc/passwd", "/etc/passwd", "/proc/self/environ", "/disk"])
def test_explicit_paths_agree(tmp_path: Path, path: str) -> None:
    nodes = [Node("disk", directory=True), Node("disk/x", "/etc/passwd"), Node("etc", "/etc")]
    mounted, merged = trees(tmp_path / "root", nodes)
    assert answer(mounted, path) == answer(merged, path)
    assert answer(mounted, path)[0] != "found"


def test_found_lists_what_the_resolved_disk_holds_and_nothing_of_the_host(tmp_path: Path) -> None:
    mounted, merged = trees(tmp_path / "root", [Node("etc/sub", directory=True), Node("etc/.hidden"),
                                                Node("disk", "/etc")])
    expected = ("DiskNotFoundError", "no disk file directly under /disk/ (found: /disk/.hidden, /disk/sub); "
                "pass --path with the disk file's path in the image")
    assert answer(mounted) == answer(merged) == expected


def test_a_disk_dir_that_leads_out_names_no_host_entry(tmp_path: Path) -> None:
    mounted, merged = trees(tmp_path / "root", [Node("disk", "/etc")])
    assert answer(mounted) == answer(merged)
    kind, message = answer(mounted)
    assert kind == "DiskNotFoundError"
    assert message.startswith("no disk file directly under /disk/ (/disk is a symlink to /etc, which leads to "
                              "no directory inside the image)")


def test_found_is_bounded(tmp_path: Path) -> None:
    mounted, merged = trees(tmp_path / "root", [Node(f"disk/d{i:03}", directory=True) for i in range(100)])
    assert answer(mounted) == answer(merged)
    message = answer(mounted)[1]
    assert "/disk/d009, … 90 more)" in message and "/disk/d010" not in message


def test_no_lookup_goes_through_a_link_or_above_the_root(tmp_path: Path) -> None:
    mounted, _ = trees(tmp_path / "root", [Node("disk", "/etc"), Node("up", "..")])
    # The resolver never asks for these; the tree answers as layer metadata would, not with the host's files.
    for path in ("disk/passwd", "/etc/passwd", "../root", "up/root", "..", "up"):
        found = mounted.lookup(path)
        assert found is None or found.kind == SYMLINK, path
    assert mounted.children("disk") == [] and mounted.children("up") == [] and mounted.children("..") == []
    assert mounted.children("/") == ["disk", "up"]


def test_open_disk_refuses_a_file_swapped_after_it_was_resolved(tmp_path: Path) -> None:
    mounted, _ = trees(tmp_path / "root", [Node("disk", directory=True), Node("disk/vm.qcow2")])
    _, member = find_disk(mounted)
    (tmp_path / "root" / "disk" / "vm.qcow2").unlink()
    (tmp_path / "root" / "disk" / "vm.qcow2").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeImageError, match="changed while cdisk looked at it"):
        mounted.open_disk(member)


def test_open_disk_refuses_a_parent_swapped_for_a_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mounted, _ = trees(root, [Node("images", directory=True), Node("images/vm.qcow2"), Node("disk", "images")])
    _, member = find_disk(mounted)
    assert member.path == "images/vm.qcow2"
    # The same file, reached through a parent that is now a link: still not what was resolved.
    (root / "images").rename(root / "real")
    (root / "images").symlink_to("real")
    with pytest.raises(UnsafeImageError, match="changed while cdisk looked at it"):
        mounted.open_disk(member)


def test_open_disk_gives_the_resolved_file(tmp_path: Path) -> None:
    mounted, _ = trees(tmp_path / "root", [Node("images", directory=True), Node("images/vm.qcow2"),
                                           Node("disk", "/images")])
    _, member = find_disk(mounted)
    fd = mounted.open_disk(member)
    try:
        assert os.pread(fd, 4, 0) == b"QFI\xfb"
    finally:
        os.close(fd)


@pytest.mark.parametrize("case", list(CASES))
def test_members_are_what_layer_metadata_holds(tmp_path: Path, case: str) -> None:
    mounted, merged = trees(tmp_path / "root", CASES[case])
    pending = [""]
    while pending:  # the walk the search for disks makes: the same entries, kinds and links, by name
        directory = pending.pop()
        seen = [(m.path, m.kind, m.linkname) for m in mounted.members(directory)]
        assert seen == [(m.path, m.kind, m.linkname) for m in merged.members(directory)], directory
        pending += [path for path, kind, _ in seen if kind == DIR]
    assert mounted.members("disk/../..") == [] and mounted.members("nowhere") == []


def test_a_huge_directory_is_not_read_past_the_limit(tmp_path: Path) -> None:
    nodes = [Node("many", directory=True), *(Node(f"many/{n:02}") for n in range(30))]
    mounted, merged = trees(tmp_path / "root", nodes)
    for tree in (mounted, merged):
        with pytest.raises(TooManyEntries):
            tree.members("many", 30)  # the directory and its 30 names: 31
        assert tree.read == 0
    assert not mounted.seen  # nothing stat'ed by the refused listing
    for tree in (mounted, merged):
        assert len(tree.members("many", 31)) == 30 and tree.read == 31
