"""The merged view of an image's layers, and path resolution that never leaves the image.

Pure functions over tar metadata: no file is opened here. The same resolution rules serve every
method of reading the image (`ImageTree` is anything that can look a path up and list a directory).

`members_from_tar` unpacks one layer the way containers/storage does (`archive.Unpack` into the
layer's own directory, with the overlay whiteout format, inside a chroot of it), on paper:

- every name is cleaned as Go's `filepath.Clean` cleans it (`x/../disk/a` is `disk/a`, `/disk/a`
  is `disk/a`); a root entry that is a directory changes nothing;
- missing parent directories are created; an entry replaces what the layer already holds at its
  path (and everything under it), unless both are directories;
- `D/.wh.NAME` makes `D/NAME` a whiteout, `D/.wh..wh..opq` makes D opaque (hiding lower layers);
- a hard link takes what its target is at that moment in the same layer: a file's data (its
  offset in the blob), a symlink, a device;
- a PAX global header changes nothing when it has a top-level name the layer has not used yet.

What storage would refuse (podman then never has the image), or what differs between storage's
paths (overlay or fuse-overlayfs whiteouts, chroot or not, root or rootless), is refused: a name or
hard link that climbs out of the root, a non-directory root entry, anything under a file, symlink or
whiteout of the same layer (but a whiteout under a whiteout, which `rm -rf` layers hold, is a no-op),
a whiteout and an entry for the same path in one layer, an opaque root, AUFS metadata (`.wh..wh.*`),
a `.wh.` directory, a hard link to nothing, to a directory or to a whiteout of the same layer, a
symlink to "", a character device 0/0 (an overlay whiteout), typeflags storage cannot unpack, names
longer than Linux allows, and a global header that could remove or whiteout something.

`MergedTree` then stacks the layers as overlayfs does. Every operation costs time in proportion to
what it adds or removes (a children index per directory), never to the size of the tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdisk.core import tar_headers
from cdisk.core.errors import DiskNotFoundError, LayerRefused, UnsafeImageError
from cdisk.core.tar_headers import TarEntry

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Linux gives up after 40 symlinks in one lookup (MAXSYMLINKS); so do we.
MAX_SYMLINKS = 40
# Linux's NAME_MAX and PATH_MAX (with its NUL): longer names fail to unpack in storage.
NAME_MAX, PATH_MAX = 255, 4095

FILE, DIR, SYMLINK, OTHER = "file", "dir", "symlink", "other"
# Only inside one layer's unpacking: a path an overlay whiteout occupies.
_WHITEOUT = "whiteout"


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


def go_clean(path: str) -> str:
    """Go's `filepath.Clean` on Linux: lexical, '..' at a rooted start dropped, "" is "."."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not rooted:
            parts.append("..")
    cleaned = "/".join(parts)
    return "/" + cleaned if rooted else cleaned or "."


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class _Tree:
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


@dataclass
class _LayerUnpack:
    """One layer's directory as storage fills it, member by member."""

    layer: int
    tree: _Tree
    opaque: set[str]

    def refuse(self, what: str, entry: TarEntry) -> LayerRefused:
        return LayerRefused(f"{what} ({entry.name!r})", entry.offset)

    def clean(self, entry: TarEntry) -> str | None:
        """The entry's path in the layer, or None for the root itself."""
        cleaned = go_clean(entry.name)
        if cleaned in (".", "/"):
            return None
        if cleaned == ".." or cleaned.startswith("../"):
            raise self.refuse("a name that climbs out of the image", entry)
        path = cleaned.lstrip("/")
        encoded = path.encode("utf-8", "surrogateescape")
        if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
            raise self.refuse("a name longer than Linux allows", entry)
        if any(part.startswith(WHITEOUT_PREFIX) for part in path.split("/")[:-1]):
            raise self.refuse("a path through a .wh. directory", entry)
        return path

    def parents(self, path: str, entry: TarEntry, whiteout: bool) -> bool:
        """Make the parent directories of `path`, as MkdirAll would; False when a whiteout is a no-op."""
        missing: list[str] = []
        parent = _parent(path)
        while (kind := self.tree.kind(parent)) is None:
            missing.append(parent)
            parent = _parent(parent)
        if kind != DIR:
            # mknod of a whiteout under a file or device fails with ENOTDIR, which storage ignores;
            # anything else fails the pull, and through a symlink it would land elsewhere.
            if whiteout and kind != SYMLINK:
                return False
            raise self.refuse(f"a member under a {kind} of the same layer", entry)
        for directory in reversed(missing):
            self.tree.put(LayerMember(directory, DIR, self.layer))
        return True

    def whiteout(self, path: str, entry: TarEntry) -> None:
        parent, _, name = path.rpartition("/")
        if name == OPAQUE_MARKER:
            if parent == "":
                raise self.refuse("an opaque marker for the image root", entry)
            self.opaque.add(parent)
            return
        hidden = name[len(WHITEOUT_PREFIX):]
        if name.startswith(WHITEOUT_PREFIX * 2) or hidden in ("", ".", ".."):
            raise self.refuse("AUFS metadata or a whiteout of nothing", entry)
        target = f"{parent}/{hidden}" if parent else hidden
        if self.tree.kind(target) is not None:
            # overlay's mknod fails (EEXIST); AUFS-format whiteouts would keep both.
            raise self.refuse("a whiteout for a path the same layer holds", entry)
        self.tree.put(LayerMember(target, _WHITEOUT, self.layer))

    def hard_link(self, path: str, entry: TarEntry) -> LayerMember:
        cleaned = go_clean(entry.linkname)
        if cleaned in (".", "/", "..") or cleaned.startswith("../"):
            raise self.refuse(f"a hard link to {entry.linkname!r}, outside the image or its root", entry)
        target_path = cleaned.lstrip("/")
        parent = _parent(target_path)
        while parent and self.tree.kind(parent) == DIR:
            parent = _parent(parent)
        target = self.tree.nodes.get(target_path)
        if parent or target is None or target.kind in (DIR, _WHITEOUT):
            raise self.refuse(f"a hard link to {entry.linkname!r}, which the layer does not hold as a "
                              "file before it", entry)
        return LayerMember(path, target.kind, self.layer, target.offset, target.size, target.linkname,
                           target.sparse)

    def add(self, entry: TarEntry) -> None:
        if entry.type == tar_headers.GLOBAL:
            self.global_header(entry)
            return
        path = self.clean(entry)
        if path is None:
            if entry.type != tar_headers.DIRECTORY:
                raise self.refuse("a non-directory entry for the image root", entry)
            return
        name = path.rpartition("/")[2]
        is_whiteout = name.startswith(WHITEOUT_PREFIX)
        # setxattr for an opaque marker fails under a non-directory; only mknod's failure is ignored.
        if not self.parents(path, entry, is_whiteout and name != OPAQUE_MARKER):
            return
        if is_whiteout:
            self.whiteout(path, entry)
            return
        existing = self.tree.kind(path)
        if existing == _WHITEOUT:
            raise self.refuse("an entry for a path the same layer whited out", entry)
        is_dir = entry.type == tar_headers.DIRECTORY
        if existing is not None and not (existing == DIR and is_dir):
            for removed in self.tree.remove(path):
                self.opaque.discard(removed)
        if entry.type == tar_headers.REGULAR:
            member = LayerMember(path, FILE, self.layer, entry.data_offset, entry.size, sparse=entry.sparse)
        elif is_dir:
            member = LayerMember(path, DIR, self.layer)
        elif entry.type == tar_headers.SYMLINK:
            if not entry.linkname:
                raise self.refuse("a symlink to nothing", entry)
            member = LayerMember(path, SYMLINK, self.layer, linkname=entry.linkname)
        elif entry.type == tar_headers.HARDLINK:
            member = self.hard_link(path, entry)
        elif entry.type in (tar_headers.CHAR, tar_headers.BLOCK_DEVICE, tar_headers.FIFO):
            if entry.type == tar_headers.CHAR and entry.devmajor == entry.devminor == 0:
                raise self.refuse("a character device 0/0 (an overlay whiteout)", entry)
            member = LayerMember(path, OTHER, self.layer)
        else:
            raise self.refuse(f"a member of tar type {entry.type!r}, which podman cannot unpack", entry)
        self.tree.put(member)

    def global_header(self, entry: TarEntry) -> None:
        # storage treats a global header's name as an entry it then does not create: it may still make
        # parent directories, remove what is at that path, or turn it into a whiteout.
        cleaned = go_clean(entry.name)
        if cleaned == ".":
            return
        if "/" in cleaned or cleaned.startswith(WHITEOUT_PREFIX) or cleaned == ".." \
                or self.tree.kind(cleaned) is not None:
            raise self.refuse("a PAX global header whose name could change the layer", entry)

    def members(self) -> list[LayerMember]:
        """The layer's contents, parents first, whiteouts and opaque markers as `.wh.` members."""
        members: list[LayerMember] = []
        for path, node in self.tree.nodes.items():
            if node.kind == _WHITEOUT:
                parent, _, name = path.rpartition("/")
                marker = WHITEOUT_PREFIX + name
                members.append(LayerMember(f"{parent}/{marker}" if parent else marker, OTHER, self.layer))
                continue
            members.append(node)
            if path in self.opaque:
                members.append(LayerMember(f"{path}/{OPAQUE_MARKER}", OTHER, self.layer))
        return members


def members_from_tar(entries: Iterable[TarEntry], layer: int) -> list[LayerMember]:
    """One layer's contents as containers/storage unpacks its tar entries (see the module docstring).

    Raises:
        LayerRefused: storage would refuse the layer, or its result depends on how podman is set up.
    """
    unpack = _LayerUnpack(layer, _Tree(), set())
    for entry in entries:
        unpack.add(entry)
    return unpack.members()


class MergedTree:
    """The image's root as the runtime sees it: layers stacked as overlayfs stacks them.

    Each layer is a list of members as a layer's directory holds them: whiteouts (`D/.wh.NAME`) hide
    NAME of the layers below, an opaque marker (`D/.wh..wh..opq`) everything below in D; a
    non-directory hides what is below at its path; directories merge. Parents of every member,
    whiteouts included, are directories of that layer.
    """

    def __init__(self, layers: Sequence[Iterable[LayerMember]]) -> None:
        self._tree = _Tree()
        for members in layers:
            self._apply(list(members))

    @property
    def entries(self) -> dict[str, LayerMember]:
        """Every path of the merged view (implicit directories included), without the root."""
        return self._tree.nodes

    def _make_parents(self, path: str, layer: int) -> None:
        missing: list[str] = []
        parent = _parent(path)
        while (kind := self._tree.kind(parent)) != DIR:
            if kind is not None:
                self._tree.remove(parent)
            missing.append(parent)
            parent = _parent(parent)
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
