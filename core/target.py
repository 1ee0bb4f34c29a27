"""The target: a file written under a temp name and renamed into place, or a block device written in place."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cdisk.core.errors import TargetError, UsageError
from cdisk.core.qemu_img import Measure


@dataclass(frozen=True)
class Target:
    """Where the disk goes. `path` is absolute; `is_block` when it is an existing block device."""

    path: str
    is_block: bool

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)


def plan_target(path: str, force: bool, out_format: str, target_is_zero: bool = False) -> Target:
    """Check the target before any expensive work.

    Raises:
        TargetError: its directory is missing, it is a directory, it exists without --force, or it is
            a block device asked to hold a format other than raw.
    """
    absolute = os.path.abspath(path)
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise TargetError(f"{directory} does not exist; create it or choose another target")
    try:
        mode = os.stat(absolute).st_mode
    except FileNotFoundError:
        mode = 0
    if target_is_zero and not stat.S_ISBLK(mode):
        raise UsageError(f"--target-is-zero is for an existing block device, and {absolute} is not one; "
                         "drop --target-is-zero (a new file is known to be empty)")
    if not mode:
        return Target(absolute, is_block=False)
    if stat.S_ISDIR(mode):
        raise TargetError(f"{absolute} is a directory; give the path of the disk file to write")
    if not force:
        raise TargetError(f"{absolute} already exists; pass --force to replace it")
    if stat.S_ISBLK(mode):
        if out_format != "raw":
            raise TargetError(f"{absolute} is a block device, which cdisk writes as raw only; drop -O "
                              f"{out_format} or write to a file")
        return Target(absolute, is_block=True)
    if not stat.S_ISREG(mode):
        raise TargetError(f"{absolute} is neither a regular file nor a block device; choose another target")
    return Target(absolute, is_block=False)


def _device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use in `directory`'s filesystem."""
    vfs = os.statvfs(directory)
    return vfs.f_bavail * vfs.f_frsize


def check_room(target: Target, virtual_size: int, needed: Measure, file_length: int) -> None:
    """Refuse before writing when the disk cannot fit.

    Args:
        virtual_size: the disk's size as the guest sees it (a block device must hold it all).
        needed: what qemu-img says the written file takes on disk.
        file_length: the length of the file qemu-img will write (raw: the virtual size, sparse).
    """
    if target.is_block:
        capacity = _device_size(target.path)
        if capacity < virtual_size:
            raise TargetError(f"{target.path} holds {capacity} bytes but the disk is {virtual_size}; "
                              "use a larger device")
        return
    free = free_bytes(target.directory)
    if needed.required > free:
        raise TargetError(f"{target.directory} has {free} bytes free but the disk needs {needed.required}; "
                          "free some space or choose another target")
    # The filesystem's own limit on a file's length (FAT's 4 GiB, a quota, RLIMIT_FSIZE): asking for
    # the length up front is the one check that knows them all, and costs no space on a sparse file.
    with tempfile.NamedTemporaryFile(prefix=".cdisk-probe-", dir=target.directory) as probe:
        try:
            os.truncate(probe.name, file_length)
        except OSError as error:
            if error.errno in (errno.EFBIG, errno.EINVAL):
                raise TargetError(f"{target.directory} cannot hold a file of {file_length} bytes; "
                                  "choose a target on another filesystem or -O qcow2") from None
            raise


def keep_previous(path: str, keep: int) -> None:
    """Shift the previous versions (TARGET.1 → TARGET.2, …) and hard-link TARGET as TARGET.1.

    A link, not a rename: TARGET stays in place until the new disk is renamed over it.
    """
    if keep < 1 or not os.path.exists(path):
        return
    for n in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
    if os.path.exists(f"{path}.1"):
        os.unlink(f"{path}.1")
    os.link(path, f"{path}.1")


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def writing(target: Target, keep: int = 0, durable: bool = False) -> Iterator[str]:
    """The path qemu-img should write. A file is renamed over the target only if the block succeeds
    (after keeping `keep` previous versions); otherwise the partial file is removed, whatever ended
    the block.

    With `durable`, the data reaches the disk before the rename, so a crash right after it cannot
    leave a renamed but empty disk where a good one was (refresh asks for this; convert, like cp and
    qemu-img, leaves flushing to the kernel).
    """
    if target.is_block:
        yield target.path
        if durable:
            _sync(target.path)
        return
    name = os.path.basename(target.path)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".cdisk-part", dir=target.directory)
    try:
        # mkstemp makes 0600; the disk gets the mode any new file of this user would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    finally:
        os.close(fd)
    try:
        yield temp
        if durable:
            _sync(temp)
        keep_previous(target.path, keep)
        os.replace(temp, target.path)
        if durable:
            _sync(target.directory)  # the rename survives a crash only once its directory is on disk
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
