"""Where the disk's bytes lie on the host, by method: a member of a saved layer (`save`), or later others."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core import oci_layout, podman, qemu_img
from cdisk.core.disks import find_disk
from cdisk.core.errors import TargetError, UsageError
from cdisk.core.podman import Image

METHODS = ("auto", "save")


@dataclass(frozen=True)
class DiskSource:
    """The disk of an image as qemu-img will read it: `size` bytes at `offset` of host file `filename`.

    `offset` is None when the file is the disk itself.
    """

    image_path: str
    method: str
    filename: str
    offset: int | None
    size: int

    def node(self) -> dict[str, Any]:
        """The qemu block node reading exactly the disk's bytes."""
        if self.offset is None:
            return qemu_img.file_node(self.filename)
        return qemu_img.slice_node(self.filename, self.offset, self.size)

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the disk from `offset`, never past its end."""
        length = max(0, min(length, self.size - offset))
        with open(self.filename, "rb") as f:
            f.seek((self.offset or 0) + offset)
            return f.read(length)


def _check_room_for_save(image: Image, directory: str) -> None:
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if image.size > free:
        raise TargetError(f"podman save needs about {image.size} bytes in {directory} but only {free} are "
                          "free; pass --tmpdir on a larger filesystem")


@contextmanager
def saved_disk(image: Image, tmp_parent: str, path: str | None) -> Iterator[DiskSource]:
    """The save method: `podman save` the image's layers to a private temp dir, find the disk in them.

    The temp dir is removed when the block ends, however it ends.
    """
    try:
        workdir = tempfile.mkdtemp(prefix=".cdisk-save-", dir=tmp_parent)
    except OSError as error:
        raise TargetError(f"cannot make a temp dir in {tmp_parent}: {error.strerror}; "
                          "pass --tmpdir with a writable directory") from None
    try:
        _check_room_for_save(image, workdir)
        layout = Path(workdir, "layout")
        podman.save_oci_dir(image.id, str(layout))
        blobs = oci_layout.layer_blobs(layout, image.id)
        image_path, member = find_disk(oci_layout.merged_tree(blobs), path)
        yield DiskSource(image_path, "save", str(blobs[member.layer]), member.offset, member.size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def open_disk(method: str, image: Image, tmp_parent: str, path: str | None) -> Iterator[DiskSource]:
    """The disk of `image` read by `method` (`auto` picks the best one available)."""
    if method not in METHODS:
        raise UsageError(f"--method {method}: use one of {', '.join(METHODS)}")
    with saved_disk(image, tmp_parent, path) as source:
        yield source
