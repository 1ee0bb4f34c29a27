"""A disk copied out of a compressed layer as it was decompressed: an anonymous file cdisk wrote and holds open.

qemu-img reads it as `/dev/fd/N`, like a file read in place. When it already is the result asked for (a raw
disk to a raw file on the same filesystem), it is given a name instead of being converted: no byte copied twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cdisk.core import qemu_img
from cdisk.core.sources import read_span


@dataclass(frozen=True)
class CopiedFile:
    """A `DiskSource`: the disk's bytes in the anonymous file `fd` (in `directory`; the caller owns and closes
    it). `complete` is false when only its head was copied (for `ls`); `linkable` when it can be given a name
    (made with O_TMPFILE).
    """

    image_path: str
    fd: int
    size: int
    complete: bool = True
    linkable: bool = False

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.fd,)

    def node(self) -> dict[str, Any]:
        return qemu_img.file_node(f"/dev/fd/{self.fd}")

    def read_at(self, offset: int, length: int) -> bytes:
        return read_span(self.fd, 0, self.size, offset, length)

    def link_as(self, path: str) -> bool:
        """Give the file the name `path` (which must not exist), with the mode a new file of this user gets.
        False when it cannot be: convert then.
        """
        if not (self.complete and self.linkable):
            return False
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.fchmod(self.fd, 0o666 & ~umask)
            # linkat(AT_SYMLINK_FOLLOW) through /proc names an O_TMPFILE file; Python calls linkat, not
            # link (which would link the /proc symlink itself), only when given a directory descriptor.
            fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(str(self.fd), path, src_dir_fd=fds, follow_symlinks=True)
            finally:
                os.close(fds)
        except OSError:
            return False
        return True
