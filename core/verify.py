"""`cdisk verify`: does a target hold exactly the image's disk? Compared in place, nothing extracted."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from cdisk.core import formats, qemu_img, sources
from cdisk.core.inspection import inspect_disk
from cdisk.core.podman import Image
from cdisk.core.progress import Progress
from cdisk.core.target import Target, existing_target, os_errors


@dataclass(frozen=True)
class Verdict:
    """The answer: `first_difference` is None when the target holds exactly the disk."""

    image: str
    image_id: str
    disk: str
    target: str
    target_format: str
    identical: bool
    first_difference: int | None
    method: str


def _target_format(target: Target) -> str:
    def read_at(offset: int, length: int) -> bytes:
        with open(target.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    # The target is told by its bytes too: a qcow2 there that names a backing file is refused.
    with os_errors(target.path):
        return formats.detect_format(read_at)


def _target_node(target: Target) -> dict[str, Any]:
    if target.is_block:
        return {"driver": "host_device", "filename": target.path}  # qemu's file driver refuses a device
    return qemu_img.file_node(target.path)


def verify(reference: str, image: Image, target_path: str, asked_method: str, tmpdir: str | None,
           disk_path: str | None, progress: Progress) -> Verdict:
    """Compare the image's disk with `target_path` through qemu-img, by the method asked for.

    `tmpdir` (for the save method) defaults as for every command (`sources.temp_parent`).
    """
    planned = existing_target(target_path)
    target = planned.path
    target_format = _target_format(planned)
    method = sources.choose_method(asked_method)
    if method == sources.USERNS_MOUNT:
        method = "save"  # comparing writes nothing, so a rootless user needs no user namespace for it
    tmp_parent = sources.temp_parent(tmpdir, planned)
    with ExitStack() as stack:
        source = stack.enter_context(sources.open_disk(method, image, tmp_parent, disk_path, progress))
        disk = inspect_disk(source)
        target_spec = qemu_img.image_spec(target_format, _target_node(planned))
        target_size = qemu_img.info(target_spec).virtual_size
        progress.stage("comparing")
        difference = qemu_img.compare(disk.spec, target_spec, source.pass_fds)
        if difference is None and target_size != disk.virtual_size:
            difference = min(target_size, disk.virtual_size)
    return Verdict(reference, image.id, source.image_path, target, target_format, difference is None, difference,
                   source.method)
