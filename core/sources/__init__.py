"""Disk sources: how the disk's bytes are reached on this host, for qemu-img (a block node) and for the header
checks (read_at). This is the seam; each way of reaching the bytes is one module of this package — a file
read in place through a descriptor (`in_place`), a member at an offset of a tar (`tar_member`), a disk
decompressed out of a compressed layer into an anonymous file (`copied`).
"""

from __future__ import annotations

import os
from typing import Any, Protocol


class DiskSource(Protocol):
    """The disk of an image: `size` bytes, found at `image_path` in the image."""

    @property
    def image_path(self) -> str:
        """The disk's path in the image, e.g. /disk/disk.img."""

    @property
    def size(self) -> int:
        """The disk file's length in bytes."""

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors qemu-img must inherit to open the node."""

    def node(self) -> dict[str, Any]:
        """The qemu block node that reads exactly the disk's bytes."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the disk from `offset`, never past its end."""


def read_span(fd: int, base: int, size: int, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset` of the `size` bytes that start at `base` of open file `fd`."""
    length = max(0, min(length, size - offset))
    return os.pread(fd, length, base + offset) if length else b""
