"""The target: a file written under a temp name and renamed into place, or a block device written in place.

TARGET exists when anything is there, a dangling symlink included (`lstat`). A symlink at TARGET is
followed once, here, and everything after works on the file or device it names: operators name
devices through /dev/disk/by-id/… links, and a link to a file (`current.raw -> fedora-40.raw`) keeps
pointing at the new disk, as with `cp` or `qemu-img convert`. A link that dangles or loops is refused:
cdisk does not create files where a link points.

Every OSError met on the target's path (a read-only or full filesystem, no permission, a name too
long, a loop) becomes one TargetError naming the path and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cdisk.core import leftovers
from cdisk.core.errors import TargetError, UsageError

_TEMP_SUFFIX = ".cdisk-part"
_TEMP_RANDOM = 8  # the characters mkstemp adds

_ADVICE = {
    errno.EROFS: "choose a target on a writable filesystem",
    errno.EACCES: "check the permissions of the directory, or choose another target",
    errno.EPERM: "check the permissions and attributes (chattr) of the directory, or choose another target",
    errno.ENOSPC: "free some space (or inodes) there, or choose another target",
    errno.EDQUOT: "free some space within your quota, or choose another target",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ELOOP: "the path holds a symlink loop; fix the link or choose another target",
    errno.ENOTDIR: "a component of the path is not a directory; fix the path",
}


@dataclass(frozen=True)
class Measure:
    """Bytes the converted disk needs: `required` as qemu-img writes it, `fully_allocated` at most."""

    required: int
    fully_allocated: int


def target_problem(path: str, error: OSError) -> TargetError:
    """The TargetError an OSError on the target's path means to the operator."""
    advice = _ADVICE.get(error.errno or 0, "check the target and its directory, or choose another target")
    return TargetError(f"{path}: {error.strerror or error}; {advice}")


@contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn an OSError raised in the block into the TargetError it means for `path`."""
    try:
        yield
    except OSError as error:
        raise target_problem(path, error) from None


@dataclass(frozen=True)
class Target:
    """Where the disk goes. `path` is absolute, a symlink at TARGET already followed; `is_block` when
    it is an existing block device.
    """

    path: str
    is_block: bool

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)


def _follow(link: str) -> tuple[str, int]:
    """The path a symlink at TARGET names and that path's mode; refused when it dangles (loops raise ELOOP)."""
    try:
        mode = os.stat(link).st_mode
    except FileNotFoundError:
        raise TargetError(f"{link} is a symlink to {os.readlink(link)}, which does not exist; cdisk does not "
                          "create files through a dangling link: remove the link or give the file's own "
                          "path") from None
    return os.path.realpath(link), mode


# registry[:port]/repository:tag or @digest, the registry named as such (a dot, a port, or localhost): a path
# of that shape is far likelier an image name than a file an operator means to write (`out.d/vm.raw`, with no
# tag, is a path).
_IMAGE_NAME = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::[0-9]+)?|[a-z0-9.-]+:[0-9]+|localhost)"
                         r"/[a-z0-9._/-]+(?::[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})")


def _names_an_image(path: str) -> bool:
    return bool(_IMAGE_NAME.fullmatch(path))


def _check_directory(directory: str) -> None:
    try:
        mode = os.stat(directory).st_mode
    except FileNotFoundError:
        raise TargetError(f"{directory} does not exist; create it or choose another target") from None
    if not stat.S_ISDIR(mode):
        raise TargetError(f"{directory} is not a directory; fix the target's path")


def _check_writable(directory: str) -> None:
    # Before any pull or save: a directory this process cannot create files in. access() only says
    # no; making a file says why (read-only, immutable, no permission), which the message carries.
    if os.access(directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    fd, probe = leftovers.locked_file(directory, ".cdisk-probe-")
    try:
        os.unlink(probe)
    finally:
        os.close(fd)


def plan_target(path: str, force: bool, out_format: str, target_is_zero: bool = False) -> Target:
    """Check the target before any expensive work.

    Raises:
        TargetError: its directory is missing or not writable, it is a directory, a character device, FIFO or
            socket (--force or not), a dangling or looping symlink, it exists without --force, or it is a block
            device asked to hold a format other than raw.
    """
    absolute = os.path.abspath(path)
    try:
        with os_errors(absolute):
            return _plan(absolute, force, out_format, target_is_zero)
    except TargetError:
        directory = os.path.dirname(absolute)
        if not os.path.isdir(directory) and _names_an_image(path):
            # `cdisk convert fedora.raw quay.io/containerdisks/fedora:40`: the two arguments swapped.
            raise TargetError(f"TARGET {path} reads as an image name, and {directory} does not exist; IMAGE "
                              "comes first, then TARGET") from None
        raise


def _plan(absolute: str, force: bool, out_format: str, target_is_zero: bool) -> Target:
    _check_directory(os.path.dirname(absolute))
    try:
        mode = os.lstat(absolute).st_mode
    except FileNotFoundError:
        mode = 0
    resolved = absolute
    if stat.S_ISLNK(mode):
        resolved, mode = _follow(absolute)
    if target_is_zero and not stat.S_ISBLK(mode):
        raise UsageError(f"--target-is-zero is for an existing block device, and {absolute} is not one; "
                         "drop --target-is-zero (a new file is known to be empty)")
    if not mode:
        _check_writable(os.path.dirname(resolved))
        return Target(resolved, is_block=False)
    if stat.S_ISDIR(mode):
        raise TargetError(f"{absolute} is a directory; give the path of the disk file to write")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        # Refused at once, --force or not: no switch makes /dev/null, a FIFO or a socket a disk.
        raise TargetError(f"{absolute} is {_kind(mode)}, not a disk target; write a file or a block device "
                          "(to try a conversion, write a file and check it with `cdisk verify`)")
    if not force:
        raise TargetError(f"{absolute} already exists; pass --force to replace it (cdisk's -f is --force; the "
                          "output format is -O)")
    if stat.S_ISBLK(mode):
        if out_format != "raw":
            raise TargetError(f"{absolute} is a block device, which cdisk writes as raw only; drop -O "
                              f"{out_format} or write to a file")
        return Target(resolved, is_block=True)
    _check_writable(os.path.dirname(resolved))
    return Target(resolved, is_block=False)


def _kind(mode: int) -> str:
    """What a file that is neither a regular file, a directory nor a block device is, as `ls -l` tells it."""
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "neither a regular file nor a block device"


def names_block_device(path: str) -> bool:
    """Whether `path` is a block device or a symlink to one (any error: no, and plan_target says why)."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def name_max(directory: str) -> int:
    """The longest file name, in bytes, `directory`'s filesystem takes."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def existing_target(path: str) -> Target:
    """An existing file or block device to read (verify), a symlink at `path` followed.

    Raises:
        TargetError: nothing is there, or it is neither a file nor a block device.
    """
    absolute = os.path.abspath(path)
    with os_errors(absolute):
        try:
            mode = os.stat(absolute).st_mode
        except FileNotFoundError:
            raise TargetError(f"{absolute} does not exist; convert the image first") from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise TargetError(f"{absolute} is neither a file nor a block device; give the disk to verify")
        return Target(os.path.realpath(absolute), is_block=stat.S_ISBLK(mode))


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
    with os_errors(target.path):
        _check_room(target, virtual_size, needed, file_length)


def _check_room(target: Target, virtual_size: int, needed: Measure, file_length: int) -> None:
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
    fd, probe = leftovers.locked_file(target.directory, ".cdisk-probe-")
    try:
        os.ftruncate(fd, file_length)
    except OSError as error:
        if error.errno in (errno.EFBIG, errno.EINVAL):
            raise TargetError(f"{target.directory} cannot hold a file of {file_length} bytes; "
                              "choose a target on another filesystem or -O qcow2") from None
        raise
    finally:
        try:
            os.unlink(probe)
        finally:
            os.close(fd)


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


def temp_prefix(directory: str, name: str) -> str:
    """`.NAME.` for a temp file beside NAME, NAME shortened so the whole temp name stays a legal one.

    A legal NAME of 250-odd bytes plus the dot, mkstemp's random part and the suffix would exceed the
    filesystem's limit on a name (ENAMETOOLONG).
    """
    room = name_max(directory) - len(b"..") - _TEMP_RANDOM - len(_TEMP_SUFFIX)
    encoded = os.fsencode(name)
    if len(encoded) > room:
        # Cut on a character boundary: a name that does not decode stays bytes-exact through fsdecode.
        encoded = encoded[:room]
        while encoded and os.fsencode(os.fsdecode(encoded)) != encoded:
            encoded = encoded[:-1]
    return f".{os.fsdecode(encoded)}."


def temp_parent(tmpdir: str | None, target: Target | None) -> str:
    """Where a command keeps its temp data (the save method's layers, build's work): the one rule of every
    command.

    `--tmpdir` when given; else beside a file TARGET, on the filesystem that will hold the disk anyway;
    else (a block device, whose directory is /dev, a small tmpfs; or no TARGET at all) $TMPDIR or /var/tmp.
    """
    if tmpdir:
        return tmpdir
    if target is not None and not target.is_block:
        return target.directory
    return os.environ.get("TMPDIR") or "/var/tmp"


def new_file_mode() -> int:
    """The mode any new file of this process gets (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def no_follow(path: str, flags: int) -> int:
    """An `open()` opener for the temp name `writing` yields: opened as it was made, a link put in its place
    meanwhile refused, not followed."""
    return os.open(path, flags | os.O_NOFOLLOW)


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
        yield target.path  # refresh refuses devices, so nothing here asks for `durable` or `keep`
        return
    # What a run killed with SIGKILL left here (its lock died with it) goes first; a live run's stays.
    leftovers.sweep(target.directory, leftovers.BESIDE_TARGET)
    with os_errors(target.path):
        # Held under its lock until the block ends: the next run tells it from a dead run's.
        fd, temp = leftovers.locked_file(target.directory, temp_prefix(target.directory,
                                                                      os.path.basename(target.path)),
                                         _TEMP_SUFFIX)
    try:
        with os_errors(target.path):
            # mkstemp makes 0600; the disk gets the mode any new file of this user would.
            os.fchmod(fd, new_file_mode())
        yield temp
        with os_errors(target.path):
            if durable:
                _sync(temp)
            keep_previous(target.path, keep)
            os.replace(temp, target.path)
            if durable:
                _sync(target.directory)  # the rename survives a crash only once its directory is on disk
    finally:
        try:
            if os.path.lexists(temp):
                os.unlink(temp)
        finally:
            os.close(fd)


def replace_text(path: str, text: str, durable: bool = False) -> None:
    """Replace the file at `path` with `text` (UTF-8) whole, as `writing` replaces a disk: under a temp name
    beside it, never through a link, then renamed (with `durable`, synced first).

    Raises:
        TargetError: it cannot be written.
    """
    with writing(Target(path, is_block=False), durable=durable) as temp, os_errors(path), \
            open(temp, "w", encoding="utf-8", opener=no_follow) as f:
        f.write(text)
