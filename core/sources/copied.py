"""A disk copied out of a compressed layer as it was decompressed: an anonymous file cdisk wrote and holds open
(read-only).

qemu-img reads it as `/dev/fd/N`, like a file read in place. When it already is the result asked for (a raw
disk to a raw file in the same directory), it is given a name instead of being converted: no byte copied twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cdisk.core.sources.in_place import InPlaceFile


@dataclass(frozen=True)
class CopiedFile(InPlaceFile):
    """A `DiskSource`: the disk's bytes in the anonymous file `fd`, made in `directory` (the caller owns and
    closes it). `complete` is false when only its head was copied (for `ls`); `linkable` when it can be given
    a name (made with O_TMPFILE).
    """

    directory: str = ""
    complete: bool = True
    linkable: bool = False

    def link_as(self, path: str, mode: int) -> str | None:
        """Give the file the name `path` (which must not exist) and `mode`; None when done, else why it could
        not be (convert then).
        """
        if not (self.complete and self.linkable):
            return "only part of it was copied" if not self.complete else "the filesystem has no O_TMPFILE"
        try:
            os.fchmod(self.fd, mode)
            # linkat(AT_SYMLINK_FOLLOW) through /proc names an O_TMPFILE file; Python calls linkat, not
            # link (which would link the /proc symlink itself), only when given a directory descriptor.
            fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(str(self.fd), path, src_dir_fd=fds, follow_symlinks=True)
            finally:
                os.close(fds)
        except OSError as error:
            return error.strerror or str(error)
        return None
