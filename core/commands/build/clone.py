"""The disk's blocks shared into the layer being written, where the file system clones (XFS with reflink, btrfs):
no byte read or written for them, no room taken.

FICLONERANGE, not copy_file_range: where a file system cannot clone, copy_file_range copies every byte, and
silently; the ioctl either shares the blocks or fails, and then the layer is written as ever. Only whole
blocks are cloned, to a block-aligned offset of the layer (`layer.DATA_ALIGNMENT` puts the disk's data on one);
a partial last block is written by the caller.
"""

from __future__ import annotations

import contextlib
import os

from cdisk.core.clone import clone_range


def clone_blocks(disk_fd: int, size: int, out: int, at: int) -> int:
    """Share the whole blocks of the `size` bytes of `disk_fd` into `out` at offset `at`; how many bytes were
    shared (0 where the file system cannot: another file system, ext4, tmpfs, `at` off a block — then `out`
    is as it was)."""
    try:
        block = os.fstatvfs(out).f_bsize
    except OSError:
        return 0
    whole = size - size % block
    if not whole or at % block:
        return 0
    try:
        clone_range(out, disk_fd, 0, whole, at)
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL (not aligned there, or the disk shrank), ENOSPC, EPERM
        with contextlib.suppress(OSError):
            os.ftruncate(out, at)  # nothing half cloned stays: the layer is written over it as ever
        return 0
    return whole
