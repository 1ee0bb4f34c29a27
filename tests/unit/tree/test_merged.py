"""The merged view of an image's layers (whiteouts, opaque directories, replacements) and in-image path
resolution, on layer metadata alone (pure).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from cdisk.core.errors import DiskNotFoundError, UnsafeImageError
from cdisk.core.tree import merged
from cdisk.core.tree.merged import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree, resolve


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


def _lines_run(work: Callable[[], Any]) -> int:
    """How many lines of cdisk.core.tree.merged `work` executes: a count of the work done, not a time."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename == merged.__file__:
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
