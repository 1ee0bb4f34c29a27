"""`cdisk verify`: does a target hold exactly the image's disk? Compared in place, nothing extracted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cdisk.core.disk import formats
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


def _target_format(target: Target) -> str:
    # The target is told by its bytes too: a qcow2 there that names a backing file is refused.
    with os_errors(target.path):
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            return formats.detect_format(lambda offset, length: read_span(fd, 0, size, offset, length))
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
