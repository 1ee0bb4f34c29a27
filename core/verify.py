"""`cdisk verify`: does a target hold exactly the image's disk? Compared in place, nothing extracted."""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass

from cdisk.core import formats, qemu_img, sources
from cdisk.core.errors import TargetError
from cdisk.core.inspection import inspect_disk
from cdisk.core.podman import Image
from cdisk.core.progress import Progress


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


def _target_format(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TargetError(f"{path} does not exist; convert the image first") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise TargetError(f"{path} is neither a file nor a block device; give the disk to verify")

    def read_at(offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    # The target is told by its bytes too: a qcow2 there that names a backing file is refused.
    return formats.detect_format(read_at)


def verify(reference: str, image: Image, target_path: str, asked_method: str, tmpdir: str | None,
           disk_path: str | None, progress: Progress) -> Verdict:
    """Compare the image's disk with `target_path` through qemu-img, by the method asked for.

    `tmpdir` (for the save method) defaults to TARGET's directory, as for convert.
    """
    target = os.path.abspath(target_path)
    target_format = _target_format(target)
    method = sources.choose_method(asked_method)
    if method == sources.USERNS_MOUNT:
        method = "save"  # comparing writes nothing, so a rootless user needs no user namespace for it
    tmp_parent = tmpdir or os.path.dirname(target)
    with ExitStack() as stack:
        source = stack.enter_context(sources.open_disk(method, image, tmp_parent, disk_path, progress))
        disk = inspect_disk(source)
        target_spec = qemu_img.image_spec(target_format, qemu_img.file_node(target))
        target_size = qemu_img.info(target_spec).virtual_size
        progress.stage("comparing")
        difference = qemu_img.compare(disk.spec, target_spec, source.pass_fds)
        if difference is None and target_size != disk.virtual_size:
            difference = min(target_size, disk.virtual_size)
    return Verdict(reference, image.id, source.image_path, target, target_format, difference is None, difference,
                   source.method)
