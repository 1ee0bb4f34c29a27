"""Which file is the disk, on tar metadata alone (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.disk.candidates import DiskCandidate, find_disk, list_candidates
from cdisk.core.errors import DiskNotFoundError, UnsafeImageError
from cdisk.core.tree.merged import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree


def f(path: str, sparse: bool = False) -> LayerMember:
    return LayerMember(path, FILE, 0, offset=1024, size=10, sparse=sparse)


def test_the_one_file_under_disk() -> None:
    tree = MergedTree([[f("disk/.x"), LayerMember("disk/sub", DIR), f("disk/sub/y"), f("disk/vm.qcow2")]])
    assert find_disk(tree) == ("/disk/vm.qcow2", f("disk/vm.qcow2"))


def test_candidates_list_refusals() -> None:
    tree = MergedTree(
        [
            [
                f("disk/a"),
                LayerMember("disk/b", SYMLINK, linkname="/etc/passwd"),
                LayerMember("disk/c", SYMLINK, linkname="sub"),
                LayerMember("disk/sub", DIR),
                LayerMember("disk/dev", OTHER),
            ]
        ]
    )
    candidates = list_candidates(tree)
    assert [c.path for c in candidates] == ["/disk/a", "/disk/b", "/disk/dev"]
    assert candidates[0] == DiskCandidate("/disk/a", f("disk/a"))
    assert "points to /etc/passwd" in candidates[1].refusal
    assert "not a regular file" in candidates[2].refusal


def test_several_and_none() -> None:
    with pytest.raises(DiskNotFoundError, match="several disk files in the image: /disk/a, /disk/b"):
        find_disk(MergedTree([[f("disk/a"), f("disk/b")]]))
    with pytest.raises(DiskNotFoundError, match=r"no disk file directly under /disk/ \(found: nothing\)"):
        find_disk(MergedTree([[f("other/a")]]))


def test_explicit_path_and_sparse_refusal() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/b"), f("images/s", sparse=True)]])
    assert find_disk(tree, "/disk/b") == ("/disk/b", f("disk/b"))
    with pytest.raises(UnsafeImageError, match="sparse tar member"):
        find_disk(tree, "images/s")
    with pytest.raises(DiskNotFoundError, match="is not a regular file"):
        find_disk(tree, "/disk")


def test_candidates_are_named_through_disk_even_when_it_links_to_the_root() -> None:
    tree = MergedTree([[LayerMember("disk", SYMLINK, linkname="/"), f("vm.qcow2")]])
    # /disk/disk is /disk again, that is the root: a directory, so not a candidate.
    assert list_candidates(tree) == [DiskCandidate("/disk/vm.qcow2", f("vm.qcow2"))]
    assert find_disk(tree) == ("/disk/vm.qcow2", f("vm.qcow2"))


def test_no_disk_says_what_the_resolved_disk_dir_holds() -> None:
    linked = MergedTree([[LayerMember("disk", SYMLINK, linkname="/images"), LayerMember("images/sub", DIR)]])
    with pytest.raises(DiskNotFoundError, match=r"under /disk/ \(found: /disk/sub\); pass --path"):
        find_disk(linked)
    for target in ("/etc", "../..", "/disk"):
        out = MergedTree([[LayerMember("disk", SYMLINK, linkname=target)]])
        with pytest.raises(DiskNotFoundError, match=rf"under /disk/ \(/disk is a symlink to {target}, which leads to "
                                                    r"no directory inside the image\); pass --path"):
            find_disk(out)
    with pytest.raises(DiskNotFoundError, match=r"under /disk/ \(/disk is a file, not a directory\)"):
        find_disk(MergedTree([[f("disk")]]))
