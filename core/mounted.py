"""The image's root as `podman image mount` shows it, seen through the same resolution rules as a saved layer.

Overlay has applied the whiteouts already, but a symlink in the mount points at the *host* if the
kernel follows it; so the kernel is never asked to: every component is looked at with lstat and
links are resolved by `layers.resolve`, inside the mount root.
"""

from __future__ import annotations

import os
import stat

from cdisk.core.errors import UnsafeImageError
from cdisk.core.layers import DIR, FILE, OTHER, SYMLINK, LayerMember


class MountedTree:
    """An `ImageTree` over a mounted image root on the host."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen: dict[str, os.stat_result] = {}

    def _host(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def lookup(self, path: str) -> LayerMember | None:
        # Safe to hand the kernel the whole path: `resolve` only asks for paths whose every parent is a
        # directory it has already looked at, so no symlink can stand on the way.
        try:
            st = os.lstat(self._host(path))
        except FileNotFoundError:
            return None
        self.seen[path] = st
        if stat.S_ISLNK(st.st_mode):
            return LayerMember(path, SYMLINK, linkname=os.readlink(self._host(path)))
        if stat.S_ISDIR(st.st_mode):
            return LayerMember(path, DIR)
        if stat.S_ISREG(st.st_mode):
            return LayerMember(path, FILE, size=st.st_size)
        return LayerMember(path, OTHER)

    def children(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._host(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def open_disk(self, member: LayerMember) -> int:
        """Open the disk found at `member` and check it is the very file that was resolved.

        The descriptor pins the file: if the image is removed while qemu-img reads, it still reads
        this file's bytes, not whatever a path would name by then.
        """
        fd = os.open(self._host(member.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st, expected = os.fstat(fd), self.seen.get(member.path)
        if expected is None or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino) \
                or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeImageError(f"/{member.path} changed while cdisk looked at it; run cdisk again")
        return fd
