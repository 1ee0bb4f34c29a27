"""Where the disk's bytes lie on the host, by method.

`mount`: the file itself, in the root `podman image mount` gives (no copy at all).
`save`: a member of a layer tar that `podman save` wrote to a private temp dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core import oci_layout, podman, qemu_img
from cdisk.core.disks import find_disk
from cdisk.core.errors import TargetError, UsageError
from cdisk.core.layers import LayerMember, MergedTree
from cdisk.core.mounted import MountedTree
from cdisk.core.podman import Image
from cdisk.core.progress import Progress
from cdisk.core.target import Target, free_bytes

METHODS = ("auto", "mount", "save")


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
    fd: int | None = None

    def node(self) -> dict[str, Any]:
        """The qemu block node reading exactly the disk's bytes."""
        if self.offset is None:
            return qemu_img.file_node(self.filename)
        return qemu_img.slice_node(self.filename, self.offset, self.size)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors qemu-img must inherit to open `filename`."""
        return () if self.fd is None else (self.fd,)

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the disk from `offset`, never past its end."""
        length = max(0, min(length, self.size - offset))
        with open(self.filename, "rb") as f:
            f.seek((self.offset or 0) + offset)
            return f.read(length)


def system_tmpdir() -> str:
    """Where temp data goes when no target directory suits: $TMPDIR, else /var/tmp (disk, not tmpfs)."""
    return os.environ.get("TMPDIR") or "/var/tmp"


def temp_parent(tmpdir: str | None, target: Target | None) -> str:
    """Where a command keeps its temp data (the save method's layers): the one rule of every command.

    `--tmpdir` when given; else beside a file TARGET, on the filesystem that will hold the disk anyway;
    else (a block device, whose directory is /dev, a small tmpfs; or no TARGET at all) $TMPDIR or /var/tmp.
    """
    if tmpdir:
        return tmpdir
    if target is not None and not target.is_block:
        return target.directory
    return system_tmpdir()


def _check_room_for_save(image: Image, directory: str) -> None:
    free = free_bytes(directory)
    if image.size > free:
        raise TargetError(f"podman save needs about {image.size} bytes in {directory} but only {free} are "
                          "free; pass --tmpdir on a larger filesystem")


@dataclass(frozen=True)
class SavedLayers:
    """An image's layers as `podman save` wrote them, and the merged view they make."""

    blobs: list[Path]
    tree: MergedTree

    def source(self, image_path: str, member: LayerMember) -> DiskSource:
        """The disk source for a file member found in this view."""
        return DiskSource(image_path, "save", str(self.blobs[member.layer]), member.offset, member.size)


@contextmanager
def saved_layers(image: Image, tmp_parent: str) -> Iterator[SavedLayers]:
    """`podman save` the image's layers to a private temp dir, removed when the block ends, however it ends."""
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
        yield SavedLayers(blobs, oci_layout.merged_tree(blobs))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def saved_disk(image: Image, tmp_parent: str, path: str | None) -> Iterator[DiskSource]:
    """The save method: the disk read in place from the saved layer tar that holds it."""
    with saved_layers(image, tmp_parent) as saved:
        yield saved.source(*find_disk(saved.tree, path))


USERNS_MOUNT = "userns-mount"


def choose_method(asked: str) -> str:
    """The method to use: `mount` where this process may mount (root, or inside `podman unshare`),
    `userns-mount` for a rootless user (mount inside `podman unshare`), `save` when asked.
    """
    if asked not in METHODS:
        raise UsageError(f"--method {asked}: use one of {', '.join(METHODS)}")
    if asked == "save":
        return "save"
    return "mount" if os.geteuid() == 0 else USERNS_MOUNT


@contextmanager
def mounted_disk(image: Image, path: str | None) -> Iterator[DiskSource]:
    """The mount method: the disk file in the mounted image root, held open while the block runs."""
    with ExitStack() as stack:
        root = stack.enter_context(podman.mount_image(image.id))
        tree = MountedTree(root)
        image_path, member = find_disk(tree, path)
        fd = tree.open_disk(member)
        stack.callback(os.close, fd)
        # qemu-img reopens the file through the descriptor it inherits, so it reads the checked file.
        yield DiskSource(image_path, "mount", f"/dev/fd/{fd}", None, member.size, fd)


@contextmanager
def open_disk(method: str, image: Image, tmp_parent: str, path: str | None,
              progress: Progress) -> Iterator[DiskSource]:
    """The disk of `image` read by `method`: `mount` or `save`."""
    progress.stage(f"reading the disk in place ({method} method)")
    unconfined = qemu_img.unconfined_reason()
    if unconfined:
        progress.stage(f"qemu-img runs without a sandbox: {unconfined}; only raw and qcow2 disks are read")
    opened = mounted_disk(image, path) if method == "mount" else saved_disk(image, tmp_parent, path)
    with opened as source:
        yield source
