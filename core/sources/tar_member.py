"""A disk read inside a tar: the bytes of one member, at its offset in a layer blob, never extracted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cdisk.core.qemu import qemu_img
from cdisk.core.sources import read_span


@dataclass(frozen=True)
class TarMember:
    """A `DiskSource`: `size` bytes at `offset` of the tar file `blob` (qemu-img reads them as a raw slice).
    `fds`: the descriptors `blob` names (/dev/fd/N), inherited by qemu-img."""

    image_path: str
    blob: str
    offset: int
    size: int
    fds: tuple[int, ...] = ()

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return self.fds

    def node(self) -> dict[str, Any]:
        return qemu_img.slice_node(self.blob, self.offset, self.size)

    def read_at(self, offset: int, length: int) -> bytes:
        if self.fds:  # the blob is the descriptor cdisk holds: read it, never a path
            return read_span(self.fds[0], self.offset, self.size, offset, length)
        fd = os.open(self.blob, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return read_span(fd, self.offset, self.size, offset, length)
        finally:
            os.close(fd)
