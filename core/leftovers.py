"""Temp files and directories a run holds under a lock, and what a dead run left of them, removed by the next.

Every temp name cdisk makes (a partial disk beside TARGET, the save method's copy of the layers, a probe, the
private podman service's directory, serve's private socket directory) is held under a lock on a descriptor of its
own for as long as the run uses it. A SIGKILL runs no `finally`, but the kernel drops the lock with the process: a
name of cdisk's patterns whose lock can be taken without waiting belongs to a dead run, and the next run that writes
in that directory removes it. A live run's names are never touched (their lock is held); names of other patterns,
symlinks, other users' files, and a file where a directory is expected (or the reverse) are never touched either.
The descriptors are close-on-exec: a child (qemu-img, podman) never keeps a lock alive after cdisk.

A file is held by an open-file-description lock (`F_OFD_SETLK`) on one byte far past anything qemu locks (its
image locks are bytes 100 to 300): qemu-img writes the partial disk under its own locks, on NFS too, where
`flock` would be a whole-file lock that qemu-img's lock checks see. A directory, which cannot be opened for
writing, is held by `flock`. Where a filesystem takes no lock (NFS without lockd; `flock` of a directory on NFS),
the run goes on unlocked and its names are never swept: a sweep never removes what it cannot lock. Nor does a
sweep touch a file system whose locks other machines may not see (NFS, FUSE, CIFS, 9p: `locks_are_shared`).

A sweep looks at no more than `SWEEP_LIMIT` entries of a directory, so a huge directory costs a bounded time.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

SWEEP_LIMIT = 4096
# Made in every directory a run holds, first thing: a sweep removes no directory without it but an empty one, so that
# a directory of the user's that another user renamed to a name of cdisk's (in a directory both may write) is not
# taken for one.
MARK = ".cdisk-held"
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile's mkstemp and mkdtemp add
_LOCK_BYTE = 1 << 62  # beyond any disk, and far from qemu's lock bytes (block/file-posix.c: 100 and 200 on)
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
# A dead run's directory is emptied again while something still writes in it, up to ~1 s (a child stopping).
_EMPTYING_PASSES = 20
_EMPTYING_PAUSE = 0.05


@dataclass(frozen=True)
class Pattern:
    """A temp name cdisk makes: the whole name as a regex, and whether it is a directory."""

    name: re.Pattern[str]
    is_dir: bool


PART = Pattern(re.compile(rf"\..+\.{_RANDOM}\.cdisk-part", re.DOTALL), is_dir=False)
PART_DIR = Pattern(re.compile(rf"\..+\.{_RANDOM}\.cdisk-dir", re.DOTALL), is_dir=True)  # build's OCI layout
PROBE = Pattern(re.compile(rf"\.cdisk-probe-{_RANDOM}"), is_dir=False)
SAVE = Pattern(re.compile(rf"\.cdisk-save-{_RANDOM}"), is_dir=True)
SERVICE = Pattern(re.compile(rf"cdisk-podman-{_RANDOM}"), is_dir=True)
BUILD = Pattern(re.compile(rf"\.cdisk-build-{_RANDOM}"), is_dir=True)
SERVE = Pattern(re.compile(rf"cdisk-serve-{_RANDOM}"), is_dir=True)
MOUNT = Pattern(re.compile(rf"\.cdisk-mount-{_RANDOM}"), is_dir=False)  # a podman image mount's record
BESIDE_TARGET = (PART, PART_DIR, PROBE)
IN_TEMP_PARENT = (SAVE, PART, PROBE)


def _same(fd: int, path: str, dir_fd: int | None = None) -> bool:
    """Whether `path` (in `dir_fd`) still names the file `fd` has open (never following a symlink)."""
    try:
        named = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def still_named(fd: int, path: str) -> bool:
    """Whether `path` still names the file or directory `fd` has open (never following a symlink)."""
    return _same(fd, path)


def _lock(fd: int, is_dir: bool, wait: bool) -> bool | None:
    """Take the hold on `fd`: True when taken, False when another holds it (only without `wait`), None when the
    filesystem takes no lock of this kind."""
    try:
        if is_dir:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        else:
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock), padding.
            request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _LOCK_BYTE, 1, 0)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
    except OSError as error:
        if error.errno in _BUSY and not wait:
            return False
        return None
    return True


def _hold(fd: int, path: str, is_dir: bool) -> bool:
    """Lock `fd` for this run's life; False when a sweeper removed `path` before the lock was taken."""
    _lock(fd, is_dir, wait=True)
    return _same(fd, path)


def runtime_dir() -> str:
    """Where names that live no longer than the machine's uptime go (serve's socket directory, a mount's record):
    $XDG_RUNTIME_DIR (the user's own tmpfs), else /run/cdisk as root, else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return runtime
    if os.geteuid() == 0:
        os.makedirs("/run/cdisk", mode=0o755, exist_ok=True)
        return "/run/cdisk"
    return tempfile.gettempdir()


def locked_file(directory: str, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new file (mkstemp) in `directory`, its descriptor locked: closing it ends the hold.

    Raises:
        OSError: the file cannot be made.
    """
    while True:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        if _hold(fd, path, is_dir=False):
            return fd, path
        os.close(fd)  # a sweeper took it between mkstemp and flock (a window of microseconds): another name


def locked_dir(directory: str | None, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new private directory (mkdtemp) in `directory` (None: tempfile's default), a locked descriptor on it.

    Raises:
        OSError: the directory cannot be made.
    """
    while True:
        path = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=directory)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            _mark(fd)
        except FileNotFoundError:
            continue  # a sweeper took it between mkdtemp and its lock: another name
        if _hold(fd, path, is_dir=True):
            return fd, path
        os.close(fd)


@contextmanager
def held_dir(directory: str | None, prefix: str) -> Iterator[str]:
    """A private locked directory for the block, removed with all it holds however the block ends.

    Raises:
        OSError: the directory cannot be made.
    """
    fd, path = locked_dir(directory, prefix)
    try:
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def sweep(directory: str, patterns: tuple[Pattern, ...], limit: int = SWEEP_LIMIT,
          undo: Callable[[int], bool] | None = None) -> list[str]:
    """Remove from `directory` what dead runs left: names of `patterns` of the right type, owned by this user,
    whose lock is free. Returns the names removed. Nothing here raises: a sweep never stops a run.

    `undo`, given a dead run's file (its descriptor, locked by this run meanwhile), undoes what it records and
    says whether the file may go (False: kept for a run that can undo it).
    """
    removed: list[str] = []
    local: bool | None = None  # asked once, and only when a name of cdisk's is there
    try:
        # Every name is judged and removed through this one descriptor: a directory on the way renamed or swapped
        # for a link between the listing and the removal cannot send the removal elsewhere.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        with os.scandir(dir_fd) as entries:
            for n, entry in enumerate(entries):
                if n >= limit:
                    break
                pattern = next((p for p in patterns if p.name.fullmatch(entry.name)), None)
                if pattern is None:
                    continue
                if local is None:
                    local = locks_are_shared(directory)
                if local and _remove_if_dead(dir_fd, entry.name, pattern.is_dir, undo):
                    removed.append(entry.name)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return removed


# File systems whose locks every process that can reach a file sees: local ones. On NFS (nolock, local_lock),
# FUSE, CIFS or 9p a lock may be granted by this machine alone while a run on another holds the name: never swept.
_LOCAL_FILESYSTEMS = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
    0x2FC12FC1,  # zfs
    0xF2F52010,  # f2fs
    0xCA451A4E,  # bcachefs
    0x3153464A,  # jfs
    0x794C7630,  # overlay (a container's root)
})


def locks_are_shared(directory: str) -> bool:
    """Whether every run that can write in `directory` sees this machine's locks on it: a local file system
    (statfs's f_type). Unknown, or the question failing: no."""
    import ctypes  # only where a name of cdisk's is found: a sweep of a clean directory pays nothing

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(256)  # struct statfs (120 bytes on 64-bit Linux); f_type comes first
    if libc.statfs(os.fsencode(directory), buffer) != 0:
        return False
    kind = struct.unpack_from("l", buffer.raw)[0] & 0xFFFFFFFF
    return kind in _LOCAL_FILESYSTEMS


def _remove_if_dead(dir_fd: int, name: str, is_dir: bool, undo: Callable[[int], bool] | None = None) -> bool:
    kind = stat.S_ISDIR if is_dir else stat.S_ISREG
    try:
        # Before opening: never open a device, a FIFO or a link that wears the name.
        seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    if not kind(seen.st_mode) or seen.st_uid != os.geteuid():
        return False
    # A file is opened for writing: its lock is a write lock, which NFS grants only on such a descriptor.
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_RDONLY | os.O_DIRECTORY if is_dir else os.O_RDWR)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not _same(fd, name, dir_fd) or _lock(fd, is_dir, wait=False) is not True:
            return False  # replaced meanwhile, a live run holds it, or no lock here to tell
        if is_dir:
            if _marked(fd, seen.st_mode):
                return _remove_marked_dir(dir_fd, name, fd)
            # Not marked: a run killed between making it and marking it left it empty, and rmdir removes only an
            # empty one (which whoever may write here could remove anyway); another's tree stays.
            os.rmdir(name, dir_fd=dir_fd)
            return True
        if undo is not None and not undo(fd):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        with suppress(OSError):
            os.close(fd)


def _mark(fd: int) -> None:
    """The mark in the directory `fd`: made new, never through a link, never waiting on a FIFO."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    os.close(os.open(MARK, flags, 0o600, dir_fd=fd))


def _marked(fd: int, mode: int) -> bool:
    """Whether the directory `fd` (of `mode`) is one of cdisk's: its mark a regular file of this user's, and
    nobody else may write in it (a directory another user could write in, renamed to a name of cdisk's with a
    mark they made, is not taken for one)."""
    try:
        mark = os.stat(MARK, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(mark.st_mode) and mark.st_uid == os.geteuid() and not mode & 0o022


def _remove_marked_dir(dir_fd: int, name: str, fd: int) -> bool:
    """Remove a dead run's directory (`fd`, locked by this run), its mark last. The dead run's child (a `podman
    save` told to stop when cdisk died) may still be writing in it while it goes: what it adds meanwhile is removed
    again while new names keep coming, for a bounded time. A directory still growing after that, or holding a name
    that cannot be removed, keeps its mark, for a later run to take."""
    before: set[str] = set()
    for attempt in range(_EMPTYING_PASSES):
        if attempt:
            time.sleep(_EMPTYING_PAUSE)  # something came in after the first pass: let its writer end
        left = set(os.listdir(fd)) - {MARK}
        if not left:
            break
        if left <= before:
            return False  # nothing new, nothing removed: a name that cannot go
        before = left
        for entry in left:
            with suppress(OSError, RecursionError):  # RecursionError: a tree deeper than rmtree recurses
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    shutil.rmtree(entry, dir_fd=fd)
                else:
                    os.unlink(entry, dir_fd=fd)
        if not set(os.listdir(fd)) - {MARK}:
            break
    else:
        return False
    if not _same(fd, name, dir_fd):
        return False  # the name is another directory's now
    try:
        os.unlink(MARK, dir_fd=fd)
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        # A name came in after the last look: the directory is marked again, so that a later run takes it (an
        # unmarked one is only ever removed empty).
        with suppress(OSError):
            _mark(fd)
        return False
    return True
