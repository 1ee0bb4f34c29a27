"""The image's root as `podman image mount` shows it, seen through the same resolution rules as a saved layer.

Overlay has applied the whiteouts already, but a symlink in the mount points at the *host* if the
kernel follows it, and so does '..' at the mount's root or a path the image names absolutely. So the
kernel is never handed a path from the image: every walk starts at a descriptor of the mount root and
goes down one real directory at a time (`O_DIRECTORY | O_NOFOLLOW`, relative to the descriptor it
came from); links are only read, and resolved by `merged.resolve`, inside the mount root.
"""

from __future__ import annotations

import errno
import os
import stat

from cdisk.core.errors import ImageError
from cdisk.core.tree.merged import LayerMember, member_from_stat, split_path
from cdisk.core.tree.pinned import changed, names_in, same_file

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: had the file become a FIFO since it was looked at, opening it must not hang; it changes
# nothing for a regular file (and qemu-img opens its own description through /dev/fd).
_DISK = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# What a component that is absent, a file or a symlink makes an open fail with: in a walk all mean
# "no such directory in the image", which is how layer metadata answers the same question.
_NOT_A_DIRECTORY = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class MountedTree:
    """An `ImageTree` over a mounted image root on the host."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen: dict[str, os.stat_result] = {}
        self.read = 0

    def _unreadable(self, path: str, error: OSError) -> ImageError:
        return ImageError(f"cannot read /{path} in the mounted image ({error.strerror}); "
                          "try again, or use --method save")

    def _open_directory(self, parts: list[str]) -> int | None:
        """A descriptor of the directory `parts` below the root, reached without following any link,
        or None when some component is not a real directory there.
        """
        if ".." in parts:
            # Above the mount root lies the host; the resolver never asks for '..', nobody else may.
            return None
        try:
            fd = os.open(self.root, _DIRECTORY)
        except OSError as error:
            raise self._unreadable("", error) from None
        for depth, part in enumerate(parts):
            try:
                child = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as error:
                if error.errno in _NOT_A_DIRECTORY:
                    return None
                raise self._unreadable("/".join(parts[:depth + 1]), error) from None
            finally:
                os.close(fd)
            fd = child
        return fd

    def lookup(self, path: str) -> LayerMember | None:
        parts = split_path(path)
        name = "/".join(parts)
        parent = None if ".." in parts else self._open_directory(parts[:-1])
        if parent is None:
            return None
        linkname = ""
        try:
            if not parts:
                st = os.fstat(parent)
            else:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    linkname = os.readlink(parts[-1], dir_fd=parent)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return None
            raise self._unreadable(name, error) from None
        finally:
            os.close(parent)
        self.seen[name] = st
        return member_from_stat(name, st, linkname)

    def children(self, path: str) -> list[str]:
        parts = split_path(path)
        fd = self._open_directory(parts)
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))
        except OSError as error:
            raise self._unreadable("/".join(parts), error) from None
        finally:
            os.close(fd)

    def members(self, path: str, limit: int | None = None) -> list[LayerMember]:
        parts = split_path(path)
        fd = self._open_directory(parts)
        if fd is None:
            return []
        found = []
        try:
            names = sorted(names_in(fd, None if limit is None else limit - 1, path))
            self.read += 1 + len(names)
            for name in names:
                child = "/".join([*parts, name])
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                link = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
                self.seen[child] = st
                found.append(member_from_stat(child, st, link))
        except OSError as error:
            raise self._unreadable("/".join(parts), error) from None
        finally:
            os.close(fd)
        return found

    def identity(self, member: LayerMember) -> tuple[int, int] | None:
        """The file `member` was found as (device, inode): two names of one file are one disk."""
        seen = self.seen.get(member.path)
        return None if seen is None else (seen.st_dev, seen.st_ino)

    def open_disk(self, member: LayerMember) -> int:
        """Open the disk found at `member` and check it is the very file that was resolved.

        The descriptor pins the file: if the image is removed while qemu-img reads, it still reads
        this file's bytes, not whatever a path would name by then.
        """
        parts = split_path(member.path)
        parent = None if not parts or ".." in parts else self._open_directory(parts[:-1])
        if parent is None:
            raise changed(member.path)
        try:
            fd = os.open(parts[-1], _DISK, dir_fd=parent)
        except OSError as error:
            if error.errno in _NOT_A_DIRECTORY:
                raise changed(member.path) from None
            raise self._unreadable(member.path, error) from None
        finally:
            os.close(parent)
        return same_file(fd, self.seen.get(member.path), member.path)
