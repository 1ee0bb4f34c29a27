"""Blocks shared between files where the file system can (XFS with reflink, btrfs): the ioctls convert and build
both use. A leaf: each caller decides what a refusal means (EOPNOTSUPP, EXDEV, EINVAL, …)."""

from __future__ import annotations

import fcntl
import struct

# linux/fs.h: FICLONE _IOW(0x94, 9, int), FICLONERANGE _IOW(0x94, 13, struct file_clone_range)
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D


def clone_range(out: int, source: int, source_offset: int, length: int, out_offset: int) -> None:
    """Share `length` bytes of `source` at `source_offset` into `out` at `out_offset` (whole blocks, aligned).

    Raises:
        OSError: the file system cannot share them here.
    """
    fcntl.ioctl(out, FICLONERANGE, struct.pack("=qQQQ", source, source_offset, length, out_offset))
