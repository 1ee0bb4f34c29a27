"""The merged view of an image's layers, and path resolution that never leaves the image.

Pure functions over tar metadata: no file is opened here. The same resolution rules serve every
method of reading the image (`ImageTree` is anything that can look a path up and list a directory).
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdisk.core.errors import DiskNotFoundError, UnsafeImageError

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
    """A read-only view of an image's root filesystem, with paths relative to its root ("" is the root)."""

    def lookup(self, path: str) -> LayerMember | None:
        """The entry at `path`, not following a symlink at its last component; None when absent."""

    def children(self, path: str) -> list[str]:
        """The names directly inside directory `path`."""


def split_path(path: str) -> list[str]:
    """Path components, without empty and '.' ones; '..' is kept for the resolver to judge."""
    return [part for part in path.split("/") if part not in ("", ".")]


def members_from_tar(infos: Iterable[tarfile.TarInfo], layer: int) -> list[LayerMember]:
    """Turn one layer's tar headers into members, following hard links to the data they share.

    A member whose name climbs out with '..' cannot be part of an image (containers/storage refuses
    to unpack it), so it is dropped here rather than given a place in the tree.
    """
    members: list[LayerMember] = []
    files: dict[str, LayerMember] = {}
    for info in infos:
        parts = split_path(info.name)
        if not parts or ".." in parts:
            continue
        path = "/".join(parts)
        if info.isreg():
            member = LayerMember(path, FILE, layer, info.offset_data, info.size, sparse=info.issparse())
            files[path] = member
        elif info.isdir():
            member = LayerMember(path, DIR, layer)
        elif info.issym():
            member = LayerMember(path, SYMLINK, layer, linkname=info.linkname)
        elif info.islnk():
            # A tar hard link names a member archived earlier in the same tar; its data lives there.
            target = files.get("/".join(split_path(info.linkname)))
            if target is None:
                member = LayerMember(path, OTHER, layer, linkname=info.linkname)
            else:
                member = LayerMember(path, FILE, layer, target.offset, target.size, sparse=target.sparse)
                files[path] = member
        else:
            member = LayerMember(path, OTHER, layer)
        members.append(member)
    return members


class MergedTree:
    """The image's root as the runtime sees it: layers applied in order with OCI whiteout rules."""

    def __init__(self, layers: Sequence[Iterable[LayerMember]]) -> None:
        self.entries: dict[str, LayerMember] = {}
        # Paths that are, or were, directories: only replacing one of them can orphan children, so only
        # then is the (linear) subtree removal paid for.
        self._maybe_dirs: set[str] = set()
        for members in layers:
            self._apply(list(members))
        self._children: dict[str, set[str]] = {"": set()}
        for path in self.entries:
            parts = path.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                self._children.setdefault(parent, set()).add(parts[depth])

    def _remove_tree(self, path: str, keep_root: bool = False) -> None:
        prefix = path + "/"
        doomed = [p for p in self.entries if p.startswith(prefix) or (p == path and not keep_root)]
        for p in doomed:
            del self.entries[p]

    def _apply(self, members: list[LayerMember]) -> None:
        # Whiteouts hide entries of the layers below only, so they all go first.
        for member in members:
            parent, name = posixpath.split(member.path)
            if name == OPAQUE_MARKER:
                self._remove_tree(parent, keep_root=True)
            elif name.startswith(WHITEOUT_PREFIX):
                self._remove_tree(posixpath.join(parent, name[len(WHITEOUT_PREFIX):]))
        for member in members:
            if posixpath.basename(member.path).startswith(WHITEOUT_PREFIX):
                continue
            if member.kind != DIR and member.path in self._maybe_dirs:
                self._remove_tree(member.path)
                self._maybe_dirs.discard(member.path)
            # A path under what was a file below makes that file a directory.
            parts = member.path.split("/")
            for depth in range(1, len(parts)):
                ancestor_path = "/".join(parts[:depth])
                ancestor = self.entries.get(ancestor_path)
                if ancestor is not None and ancestor.kind != DIR:
                    del self.entries[ancestor_path]
                self._maybe_dirs.add(ancestor_path)
            if member.kind == DIR:
                self._maybe_dirs.add(member.path)
            self.entries[member.path] = member

    def lookup(self, path: str) -> LayerMember | None:
        member = self.entries.get(path)
        if member is None and path in self._children:
            return LayerMember(path, DIR)
        return member

    def children(self, path: str) -> list[str]:
        return sorted(self._children.get(path, ()))


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
