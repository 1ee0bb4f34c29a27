"""One layer tar applied as containers/storage applies it, on paper: the members it leaves.

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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cdisk.core import tar_headers
from cdisk.core.disk.wanted import DISK_DIR
from cdisk.core.errors import LayerRefused
from cdisk.core.paths import NAME_MAX, PATH_MAX, go_clean
from cdisk.core.tar_headers import TarEntry
from cdisk.core.tree.merged import (
    DIR,
    FILE,
    OPAQUE_MARKER,
    OTHER,
    SYMLINK,
    WHITEOUT_PREFIX,
    LayerMember,
    PathTree,
    parent_of,
)

# Only inside one layer's unpacking: a path an overlay whiteout occupies.
_WHITEOUT = "whiteout"


@dataclass
class _LayerUnpack:
    """One layer's directory as storage fills it, member by member."""

    layer: int
    tree: PathTree
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
        parent = parent_of(path)
        while (kind := self.tree.kind(parent)) is None:
            missing.append(parent)
            parent = parent_of(parent)
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
        parent = parent_of(target_path)
        while parent and self.tree.kind(parent) == DIR:
            parent = parent_of(parent)
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
    unpack = _LayerUnpack(layer, PathTree(), set())
    # tar-split, with which podman and docker both store a layer, refuses a second entry of a name (every entry
    # Go's reader returns, global headers included, its name as filepath.Clean leaves it: `d/` is `d`, `/d` not).
    seen: set[str] = set()
    for entry in entries:
        name = go_clean(entry.name)
        if name in seen:
            raise unpack.refuse("a second entry of the same path (tar-split, podman's and docker's graph-driver "
                                "layer store, refuses it)", entry)
        seen.add(name)
        unpack.add(entry)
    return unpack.members()


def disk_layer(name: str, layer: int, size: int) -> list[LayerMember]:
    """The members a disk artifact's layer stands for: /disk/`name`, its data the whole layer."""
    return [LayerMember(DISK_DIR, DIR, layer), LayerMember(f"{DISK_DIR}/{name}", FILE, layer, 0, size)]
