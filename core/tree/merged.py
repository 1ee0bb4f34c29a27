"""The merged view of an image's layers, and path resolution that never leaves the image.

Pure functions over tar metadata: no file is opened here. The same resolution rules serve every
method of reading the image (`ImageTree` is anything that can look a path up and list a directory).

`layers.unpack.members_from_tar` turns one layer tar into members as containers/storage unpacks it;
`MergedTree` then stacks the layers as overlayfs does. Every operation costs time in proportion to
what it adds or removes (a children index per directory), never to the size of the tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdisk.core.errors import DiskNotFoundError, TooManyEntries, UnsafeImageError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Linux gives up after 40 symlinks in one lookup (MAXSYMLINKS); so do we.
MAX_SYMLINKS = 40

FILE, DIR, SYMLINK, OTHER = "file", "dir", "symlink", "other"


@dataclass(frozen=True)
class LayerMember:
    """One entry of the image, as a layer tar holds it.

    `offset` and `size` locate a regular file's data in the layer blob; a hard link carries the
    offset and size of the member that holds its data.
    """

    path: str
    kind: str
    layer: int = 0
    offset: int = 0
    size: int = 0
    linkname: str = ""
    sparse: bool = False


class ImageTree(Protocol):
    """A read-only view of an image's root filesystem, with paths relative to its root ("" is the root).

    `read` counts what `members` has read so far: one for each directory listed and one for each name in it,
    each layer's directory counted apart where the tree stacks layer directories itself (the cost of a walk,
    which a bounded walk bounds).
    """

    read: int

    def lookup(self, path: str) -> LayerMember | None:
        """The entry at `path`, not following a symlink at its last component; None when absent."""

    def children(self, path: str) -> list[str]:
        """The names directly inside directory `path`."""

    def members(self, path: str, limit: int | None = None) -> list[LayerMember]:
        """The entries directly inside directory `path`, by name, links not followed (a walk's one call for a
        directory, where `children` and a `lookup` of each would open the directory again for each).

        Raises:
            TooManyEntries: listing it would read more than `limit` (as `read` counts); told before more than
                `limit` names are read and before any of them is looked at, so that a huge directory costs no
                more than the bound.
        """

    def identity(self, member: LayerMember) -> Hashable | None:
        """Where the data of the regular file `member` (as the tree found it) lie: two names with the same
        identity are one file (hard links); None when the tree cannot tell."""


def member_from_stat(path: str, st: os.stat_result, linkname: str = "", layer: int = 0) -> LayerMember:
    """The member a file on the host stands for (not followed: a link is a link, with its target)."""
    if stat.S_ISLNK(st.st_mode):
        return LayerMember(path, SYMLINK, layer, linkname=linkname)
    if stat.S_ISDIR(st.st_mode):
        return LayerMember(path, DIR, layer)
    if stat.S_ISREG(st.st_mode):
        return LayerMember(path, FILE, layer, size=st.st_size)
    return LayerMember(path, OTHER, layer)


def split_path(path: str) -> list[str]:
    """Path components, without empty and '.' ones; '..' is kept for the resolver to judge."""
    return [part for part in path.split("/") if part not in ("", ".")]


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


class PathTree:
    """Paths to members, with the names inside each directory, so that a subtree goes in its own time."""

    def __init__(self) -> None:
        self.nodes: dict[str, LayerMember] = {}
        self.kids: dict[str, set[str]] = {"": set()}

    def kind(self, path: str) -> str | None:
        if path == "":
            return DIR
        node = self.nodes.get(path)
        return None if node is None else node.kind

    def put(self, member: LayerMember) -> None:
        """Add `member`; its parent is a directory and nothing is at its path (or a directory, for one)."""
        path = member.path
        self.nodes[path] = member
        parent, _, name = path.rpartition("/")
        self.kids[parent].add(name)
        if member.kind == DIR:
            self.kids.setdefault(path, set())

    def remove(self, path: str) -> list[str]:
        """Remove `path` and everything under it; the removed paths."""
        if path not in self.nodes:
            return []
        removed, stack = [], [path]
        while stack:
            current = stack.pop()
            removed.append(current)
            del self.nodes[current]
            stack.extend(f"{current}/{name}" for name in self.kids.pop(current, ()))
        parent, _, name = path.rpartition("/")
        self.kids[parent].discard(name)
        return removed


class MergedTree:
    """The image's root as the runtime sees it: layers stacked as overlayfs stacks them.

    Each layer is a list of members as a layer's directory holds them: whiteouts (`D/.wh.NAME`) hide
    NAME of the layers below, an opaque marker (`D/.wh..wh..opq`) everything below in D; a
    non-directory hides what is below at its path; directories merge. Parents of every member,
    whiteouts included, are directories of that layer.
    """

    def __init__(self, layers: Sequence[Iterable[LayerMember]]) -> None:
        self._tree = PathTree()
        self.read = 0
        for members in layers:
            self._apply(list(members))

    @property
    def entries(self) -> dict[str, LayerMember]:
        """Every path of the merged view (implicit directories included), without the root."""
        return self._tree.nodes

    def _make_parents(self, path: str, layer: int) -> None:
        missing: list[str] = []
        parent = parent_of(path)
        while (kind := self._tree.kind(parent)) != DIR:
            if kind is not None:
                self._tree.remove(parent)
            missing.append(parent)
            parent = parent_of(parent)
        for directory in reversed(missing):
            self._tree.put(LayerMember(directory, DIR, layer))

    def _apply(self, members: list[LayerMember]) -> None:
        tree = self._tree
        # Whiteouts hide entries of the layers below only, so they all go first.
        for member in members:
            parent, _, name = member.path.rpartition("/")
            if name == OPAQUE_MARKER:
                if tree.kind(parent) == DIR:
                    for child in list(tree.kids.get(parent, ())):
                        tree.remove(f"{parent}/{child}" if parent else child)
            elif name.startswith(WHITEOUT_PREFIX):
                hidden = name[len(WHITEOUT_PREFIX):]
                tree.remove(f"{parent}/{hidden}" if parent else hidden)
        for member in members:
            self._make_parents(member.path, member.layer)
            if member.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                continue
            existing = tree.kind(member.path)
            if existing == DIR and member.kind == DIR:
                tree.nodes[member.path] = member
                continue
            tree.remove(member.path)
            tree.put(member)

    def lookup(self, path: str) -> LayerMember | None:
        if path == "":
            return LayerMember("", DIR)
        return self._tree.nodes.get(path)

    def children(self, path: str) -> list[str]:
        return sorted(self._tree.kids.get(path, ()))

    def members(self, path: str, limit: int | None = None) -> list[LayerMember]:
        names = self._tree.kids.get(path, ())
        if limit is not None and 1 + len(names) > limit:
            raise TooManyEntries(path)
        self.read += 1 + len(names)
        nodes = self._tree.nodes
        return [nodes[f"{path}/{name}" if path else name] for name in sorted(names)]

    def identity(self, member: LayerMember) -> Hashable | None:
        """A layer's byte range: a hard link in a layer tar carries the offset and size of the member holding
        its data, so every name of one file has the same."""
        return (member.layer, member.offset, member.size) if member.kind == FILE else None


def resolve(tree: ImageTree, path: str) -> LayerMember:
    """Follow `path` (and every symlink on the way) inside the image.

    An absolute symlink is taken relative to the image root, as the container runtime would. A link
    that climbs above the root, loops, or names nothing in the image is refused: following it would
    read a host path on the image's say-so.
    """
    pending = split_path(path)
    shown = "/" + "/".join(pending)
    done: list[str] = []
    links = 0
    via_link: LayerMember | None = None
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not done:
                raise UnsafeImageError(f"{shown} leads out of the image through '..'; cdisk only reads "
                                       "files inside the image: fix the image's symlinks or pick "
                                       "another disk with --path")
            done.pop()
            continue
        current = "/".join([*done, part])
        member = tree.lookup(current)
        if member is None and via_link:
            raise UnsafeImageError(f"{shown}: symlink /{via_link.path} points to {via_link.linkname}, which "
                                   "is not in the image; cdisk never follows a link out of the image: fix the "
                                   "image or pick another disk with --path")
        if member is None:
            raise DiskNotFoundError(f"{shown}: /{current} does not exist in the image; "
                                    "run `cdisk ls IMAGE` to see what it holds")
        if member.kind == SYMLINK:
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafeImageError(f"{shown}: too many symlinks (a loop?); fix the image or pick "
                                       "another disk with --path")
            via_link = member
            if member.linkname.startswith("/"):
                done = []
            pending = split_path(member.linkname) + pending
            continue
        if pending and member.kind != DIR:
            raise DiskNotFoundError(f"{shown}: /{current} is not a directory in the image")
        done.append(part)
    found = tree.lookup("/".join(done))
    if found is None:  # the root itself
        return LayerMember("", DIR)
    return found
