"""How a long-running command lives beside scripts and systemd: detached from the shell once it is ready, its
pid in a file, its readiness told to systemd (Type=notify) — without printing anything itself.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from cdisk.core.errors import Interrupted, UsageError

_CHUNK = 64 * 1024
# In a detached child: the pipe on which it tells the waiting parent that it is ready; then whether it let go.
_ready_pipe: list[int] = []
_let_go: list[bool] = []


def detach() -> int | None:
    """Fork. The child returns None and goes on in a session of its own, its stdout and stderr piped to the
    parent until it calls `ready()`. The parent relays them, and returns the exit code of the command: 0 once
    the child is ready (the child then runs on alone), the child's own code if it ends first.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        for fd in (out_r, err_r, ready_r):
            os.close(fd)
        _redirect(out_w, err_w)
        _ready_pipe.append(ready_w)
        return None
    for fd in (out_w, err_w, ready_w):
        os.close(fd)
    try:
        ready = _relay({out_r: sys.stdout.fileno(), err_r: sys.stderr.fileno()}, ready_r)
        if ready:
            return 0
        return _exit_code(os.waitpid(pid, 0)[1])
    except Interrupted:
        # Ctrl-C before the child was ready: it stops too, cleaning up after itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        raise
    finally:
        for fd in (out_r, err_r, ready_r):
            os.close(fd)


def _redirect(out: int, err: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in {devnull, out, err} - {0, 1, 2}:
        os.close(fd)


def _relay(outputs: dict[int, int], ready_fd: int) -> bool:
    """Copy the child's output until it says it is ready (True) or ends (False). Only the ready pipe decides:
    the output pipes may stay open in a grandchild the child left running.
    """
    with selectors.DefaultSelector() as selector:
        for fd in (*outputs, ready_fd):
            selector.register(fd, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                fd = int(key.fd)
                if fd == ready_fd:
                    ready = os.read(ready_fd, 1) == b"1"
                    for out in outputs:  # what it printed before saying so is in the pipes already
                        os.set_blocking(out, False)
                        _copy(out, outputs[out])
                    return ready
                if not _copy(fd, outputs[fd], once=True):
                    selector.unregister(fd)


def _copy(fd: int, to: int, once: bool = False) -> bool:
    """Copy what `fd` holds to `to`; False at its end."""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        while chunk:
            chunk = chunk[os.write(to, chunk):]
        if once:
            return True


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def ready() -> None:
    """The command is ready: a detached child lets go of the shell (its output goes nowhere from now on),
    and systemd is told (Type=notify)."""
    if _ready_pipe:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        fd = _ready_pipe.pop()
        os.write(fd, b"1")
        os.close(fd)
        _let_go.append(True)
    _notify_systemd(b"READY=1")


def log_error(message: str) -> None:
    """An error of a detached command, whose stderr goes nowhere: to syslog (the journal), under "cdisk"."""
    if _let_go:
        import syslog

        syslog.openlog("cdisk", syslog.LOG_PID)
        syslog.syslog(syslog.LOG_ERR, message)


def _notify_systemd(message: bytes) -> None:
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    address = "\0" + where[1:] if where.startswith("@") else where
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as conn:
        conn.sendto(message + f"\nMAINPID={os.getpid()}".encode(), address)


@contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Our pid in `path` (written whole, by rename) for the block's length; removed after it if still ours.

    Raises:
        UsageError: `path` names a process that still runs.
    """
    if path is None:
        yield
        return
    path = os.path.abspath(path)
    running = _pid_in(path)
    if running is not None and running != os.getpid() and _alive(running):
        raise UsageError(f"{path} names process {running}, which still runs; stop it (cdisk serve --stop SOCKET) "
                         "or choose another --pid-file")
    directory = os.path.dirname(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=".cdisk-pid-", dir=directory)
    except OSError as error:
        raise UsageError(f"cannot write --pid-file {path}: {error.strerror}; choose another") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.chmod(temp, 0o644)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    try:
        yield
    finally:
        if _pid_in(path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)


def _pid_in(path: str) -> int | None:
    """The pid a pid file at `path` holds, or None: no file, or no regular file (a FIFO there must not block
    the open, a device must not be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
