"""The image's root computed by cdisk over the engine's overlay layer directories: no mount, no copy.

An overlay store keeps each layer as a plain directory (`…/overlay/<id>/diff`); the runtime stacks them
with overlayfs. cdisk stacks them itself, with overlay's rules, top layer first:

- a name present in an upper layer hides the same name below, unless both are directories (they merge);
- a whiteout (a character device 0:0) hides the name in every layer below;
- a directory carrying the opaque xattr (`trusted.overlay.opaque`, rootless `user.overlay.opaque`, or
  fuse-overlayfs' `user.fuseoverlayfs.opaque`, value "y") hides everything below it.

As with a mount, the kernel is never handed a path from the image: every walk starts at a descriptor of a
layer directory and goes down one real directory at a time (`O_DIRECTORY | O_NOFOLLOW`); links are only
read, and resolved by `merged.resolve`. A store this reading cannot vouch for — another whiteout format
(`.wh.` files), overlay's `redirect` or `metacopy` xattrs, whose data lie elsewhere — is refused with
`LayerDirsUnusable`, so that the caller reads by another method (`reading.methods.falling_back`).
"""

from __future__ import annotations

import errno
import os
import stat

from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, LayerDirsUnusable
from cdisk.core.tree.merged import DIR, WHITEOUT_PREFIX, LayerMember, member_from_stat, split_path
from cdisk.core.tree.pinned import changed, names_in, same_file

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DISK = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
# Overlay features that put a file's data or a directory's content somewhere other than where it stands.
_ELSEWHERE = ("trusted.overlay.redirect", "user.overlay.redirect", "trusted.overlay.metacopy",
              "user.overlay.metacopy")
# Directories whose layers are remembered (`LayerDirsTree._layers`): a bound in memory for whatever walks.
KNOWN_DIRECTORIES = 100_000


def _xattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError as error:
        # Absent, or a trusted.* name this user may not read (then no store of this user carries it).
        if error.errno in (errno.ENODATA, errno.EPERM, errno.ENOTSUP, errno.EACCES):
            return None
        raise


def _xattr_names(fd: int) -> set[str]:
    """The names of the xattrs of `fd` this process can see (one call, where a getxattr per name would be seven;
    a trusted.* name is listed to whom may read it, as getxattr answers)."""
    try:
        return set(os.listxattr(fd))
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return set()
        raise


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _close(directories: list[tuple[int, int]]) -> None:
    for _, fd in directories:
        os.close(fd)


class LayerDirsTree:
    """An `ImageTree` over an image's layer directories (top first), and the way to open a disk found there."""

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs
        self.seen: dict[str, tuple[int, os.stat_result]] = {}  # path -> (layer, stat) of what was found
        # Merged directories walked through -> the layers that make them up, judged once (whiteouts, opaque
        # directories, redirects): walking through one again is an open per layer, so that a walk that lists
        # each directory from the layers' roots costs its depth in opens, not in stats and xattrs.
        self._layers: dict[tuple[str, ...], frozenset[int]] = {}
        self.read = 0

    def _unreadable(self, path: str, error: OSError) -> ImageError:
        return ImageError(f"cannot read /{path} in the image's layer directories ({error.strerror}); try again, "
                          "or use --method mount")

    def _check_dir(self, fd: int, path: str) -> bool:
        """Whether the directory at `fd` is opaque; refuse what this reading cannot vouch for."""
        names = _xattr_names(fd)
        if names.intersection(_ELSEWHERE):
            raise LayerDirsUnusable(f"/{path} uses overlay redirects or metacopy")
        return any(_xattr(fd, name) == b"y" for name in names.intersection(_OPAQUE))

    def _directories(self, parts: list[str], *, fresh: bool = False) -> list[tuple[int, int]]:
        """(layer, fd) of every layer's directory that makes up the merged directory `parts`, top first;
        empty when `parts` is no directory of the image. The caller closes the descriptors.

        A directory walked through before is opened in the layers found then, with no stat or xattr again (so
        a walk costs little more than its depth in opens); `fresh` judges every step anew.
        """
        current: list[tuple[int, int]] = []
        below: list[tuple[int, int]] = []
        try:
            for layer, directory in enumerate(self.dirs):
                current.append((layer, os.open(directory, _DIRECTORY)))
            for depth, part in enumerate(parts):
                if part == ".." or part.startswith(WHITEOUT_PREFIX):
                    raise LayerDirsUnusable(f"a path with {part!r} cannot be looked up in layer directories")
                key = tuple(parts[:depth + 1])
                known = None if fresh else self._layers.get(key)
                for layer, fd in current:
                    if known is not None:
                        if layer in known:
                            below.append((layer, os.open(part, _DIRECTORY, dir_fd=fd)))
                        continue
                    try:
                        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        break  # a whiteout, or a file or link that hides the directories below
                    below.append((layer, os.open(part, _DIRECTORY, dir_fd=fd)))
                    if self._check_dir(below[-1][1], "/".join(key)):
                        break
                if known is None and len(self._layers) < KNOWN_DIRECTORIES:
                    self._layers[key] = frozenset(layer for layer, _ in below)
                _close(current)
                current, below = below, []
                if not current:
                    return []
            return current
        except OSError as error:
            _close(current + below)
            raise self._unreadable("/".join(parts), error) from None
        except BaseException:
            _close(current + below)
            raise

    def _find(self, path: str) -> tuple[int, os.stat_result, str] | None:
        """The top-most layer holding `path` (not followed), its stat and, for a link, its target."""
        parts = split_path(path)
        if not parts:
            return None
        parents = self._directories(parts[:-1])
        try:
            for layer, fd in parents:
                try:
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if _is_whiteout(st):
                    return None
                link = os.readlink(parts[-1], dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
                return layer, st, link
            return None
        except OSError as error:
            raise self._unreadable(path, error) from None
        finally:
            for _, fd in parents:
                os.close(fd)

    def lookup(self, path: str) -> LayerMember | None:
        name = "/".join(split_path(path))
        if not name:
            return LayerMember("", DIR)
        found = self._find(name)
        if found is None:
            return None
        layer, st, link = found
        self.seen[name] = (layer, st)
        return member_from_stat(name, st, link, layer)

    def children(self, path: str) -> list[str]:
        return [member.path.rpartition("/")[2] for member in self.members(path)]

    def members(self, path: str, limit: int | None = None) -> list[LayerMember]:
        parts = split_path(path)
        directories = self._directories(parts)
        found: dict[str, LayerMember] = {}
        hidden: set[str] = set()
        read = 0
        try:
            for layer, fd in directories:
                read += 1
                names = names_in(fd, None if limit is None else limit - read, path)
                read += len(names)
                for name in names:
                    if name.startswith(WHITEOUT_PREFIX):
                        raise LayerDirsUnusable(f"/{'/'.join([*parts, name])} is an AUFS-style whiteout")
                    if name in found or name in hidden:
                        continue
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if _is_whiteout(st):
                        hidden.add(name)
                        continue
                    child = "/".join([*parts, name])
                    link = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
                    self.seen[child] = (layer, st)
                    found[name] = member_from_stat(child, st, link, layer)
        except OSError as error:
            raise self._unreadable("/".join(parts), error) from None
        finally:
            _close(directories)
        self.read += read
        return [found[name] for name in sorted(found)]

    def identity(self, member: LayerMember) -> tuple[int, int] | None:
        """The file `member` was found as (device, inode): two names of one file are one disk."""
        seen = self.seen.get(member.path)
        return None if seen is None else (seen[1].st_dev, seen[1].st_ino)

    def open_disk(self, member: LayerMember) -> int:
        """Open the disk found at `member` in its layer and check it is the very file that was resolved."""
        parts = split_path(member.path)
        seen = self.seen.get(member.path)
        if not parts or seen is None:
            raise changed(member.path)
        layer, expected = seen
        # Every step judged anew: the disk is opened through nothing remembered of an earlier walk.
        parents = dict(self._directories(parts[:-1], fresh=True))
        try:
            if layer not in parents:
                raise changed(member.path)
            fd = os.open(parts[-1], _DISK, dir_fd=parents[layer])
        except OSError as error:
            raise self._unreadable(member.path, error) from None
        finally:
            for fd_ in parents.values():
                os.close(fd_)
        same_file(fd, expected, member.path)
        if any(_xattr(fd, name) is not None for name in _ELSEWHERE):
            os.close(fd)
            raise LayerDirsUnusable(f"/{member.path} is an overlay metacopy: its data lie in another layer")
        return fd


def unusable(image: Image, *, stored: bool) -> str | None:
    """Why the image's layers cannot be read as directories here, or None when they can: an overlay store
    whose every layer directory this process may read (root's store is closed to other users). An image not
    `stored` in an engine's store is an image file.
    """
    if not stored:
        return "an image file has no layer directories (it is read in place by the save method)"
    if image.store not in ("overlay", "overlay2"):
        return f"the store is {image.store or 'unknown'}, not overlay"
    if not image.layer_dirs:
        return (f"{image.engine} named no layer directories that may be trusted (its socket is neither root's nor "
                "this user's)")
    if not all(os.access(d, os.R_OK | os.X_OK) for d in image.layer_dirs):
        return "its layer directories are not readable by this user"
    return None
