"""`cdisk verify`: does a target hold exactly the image's disk? Compared in place, nothing extracted."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from cdisk.core.disk import formats
from cdisk.core.errors import UnsafeImageError
from cdisk.core.progress import Progress
from cdisk.core.qemu import qemu_img
from cdisk.core.reading.pipeline import opened_disk
from cdisk.core.request import ImageRequest, ReadRequest
from cdisk.core.sources import read_span
from cdisk.core.target import Target, existing_target, os_errors


@dataclass(frozen=True)
class Verdict:
    """The answer: `first_difference` is None when the target holds exactly the disk."""

    image: str
    engine: str
    image_id: str
    disk: str
    target: str
    target_format: str
    identical: bool
    first_difference: int | None
    method: str


# Formats cdisk writes (`-O`) that an image's disk may not be (`formats.detect_format` refuses QED there, and
# takes a Parallels disk for raw): told apart here, on a target the operator wrote.
_PARALLELS_MAGICS = (b"WithoutFreeSpace", b"WithouFreSpacExt")
_QED_MAGIC = b"QED\0"
_QED_BACKING_FILE = 1  # QED_F_BACKING_FILE in the header's features, at byte 16


def _written_format(header: bytes) -> str | None:
    """qed or parallels when the header is one of theirs (a QED that names a backing file is refused), else None."""
    if header.startswith(_PARALLELS_MAGICS):
        return "parallels"
    if header.startswith(_QED_MAGIC) and len(header) >= 24:
        if struct.unpack_from("<Q", header, 16)[0] & _QED_BACKING_FILE:
            raise UnsafeImageError("the target is a QED with a backing file, which cdisk does not open; verify a "
                                   "self-contained disk")
        return "qed"
    return None


def _target_format(target: Target) -> str:
    # The target is told by its bytes too: a qcow2 there that names a backing file is refused.
    with os_errors(target.path):
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)

            def read_at(offset: int, length: int) -> bytes:
                return read_span(fd, 0, size, offset, length)

            return _written_format(read_at(0, 64)) or formats.detect_format(read_at)
        finally:
            os.close(fd)


def _target_node(target: Target) -> dict[str, Any]:
    if target.is_block:
        return {"driver": "host_device", "filename": target.path}  # qemu's file driver refuses a device
    return qemu_img.file_node(target.path)


def verify(image: ImageRequest, read: ReadRequest, target_path: str, progress: Progress) -> Verdict:
    """Compare the image's disk with `target_path` through qemu-img.

    TARGET is checked first: a missing one costs no pull.
    """
    planned = existing_target(target_path)
    target_format = _target_format(planned)
    with opened_disk(image, read, planned, progress) as disk:
        target_spec = qemu_img.image_spec(target_format, _target_node(planned))
        target_size = qemu_img.info(target_spec).virtual_size
        progress.stage("comparing")
        difference = qemu_img.compare(disk.spec, target_spec, disk.source.pass_fds)
        if difference is None and target_size != disk.virtual_size:
            difference = min(target_size, disk.virtual_size)
        disk.vouch()  # a verdict on bytes no digest vouches for is none
    return Verdict(image.reference, disk.image.engine, disk.image.id, disk.source.image_path, planned.path,
                   target_format,
                   difference is None, difference, disk.reading.method)
