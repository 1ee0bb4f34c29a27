"""A disk read in place: the very file, through the descriptor cdisk opened and checked.

qemu-img reopens it as `/dev/fd/N`, so a file removed or replaced meanwhile cannot change what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdisk.core.qemu import qemu_img
from cdisk.core.sources import read_span


@dataclass(frozen=True)
class InPlaceFile:
    """A `DiskSource`: the disk file itself, open as `fd` (the caller owns and closes it)."""

    image_path: str
    fd: int
    size: int

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.fd,)

    def node(self) -> dict[str, Any]:
        return qemu_img.file_node(f"/dev/fd/{self.fd}")

    def read_at(self, offset: int, length: int) -> bytes:
        return read_span(self.fd, 0, self.size, offset, length)
