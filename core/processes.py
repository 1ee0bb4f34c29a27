"""Child processes that never outlive the block that started them, and whose output never outgrows a bound.

A child's output can be driven by an image (`qemu-img check` of a crafted qcow2 prints gigabytes of
errors), so nothing here buffers a stream whole: stderr keeps only its tail, stdout is capped, and a
wall-clock deadline stops a child that hangs.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import IO, Any

from cdisk.core.errors import LimitExceeded, ToolError

# Enough for any tool's last words; what came before them is dropped, never buffered.
STDERR_TAIL = 64 * 1024
# What a JSON answer of qemu-img or podman needs, with a wide margin.
STDOUT_LIMIT = 16 * 1024 * 1024
_CHUNK = 64 * 1024
_PR_SET_PDEATHSIG = 1
# The program whose process tree a parent-death signal does not cover: bwrap's pid 1 of the sandbox's pid
# namespace sets its own only once its namespaces are built (bubblewrap.c: after clone, after mounts), and
# blocks for good on a read from its outer bwrap if that one dies before it writes (seen in CI: an orphaned
# `bwrap … /usr/bin/true` asleep in eventfd_read). `spawn()` starts it in the guard's process group.
GUARDED = "bwrap"
# The guard: an sh that reads its stdin (the pipe) to EOF, then kills its process group; started in the
# background by another sh, which leads the group, prints the guard's pid and ends, so that the guard is no child
# of cdisk (what a test or `ps --ppid` sees of cdisk's children is unchanged). The pipe is moved to fd 3 and back:
# an sh gives a background job /dev/null as stdin unless the job redirects stdin itself.
GUARD_ARGV = ("/bin/sh", "-c", 'exec 3<&0 </dev/null; sh -c "read -r _; kill -9 0" cdisk-guard <&3 3<&- '
              '>/dev/null 2>&1 & echo $!')

_forked_by = os.getpid()


def _note_parent() -> None:
    global _forked_by
    _forked_by = os.getpid()


# Run in the parent before every fork of a preexec_fn's child (and os.fork): the child then knows which process
# it was forked by, without asking getppid() after the fact (by then the parent may be dead).
os.register_at_fork(before=_note_parent)


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when cdisk dies. A SIGKILL (the OOM killer, systemd's stop timeout)
    runs no `finally`; without this a `podman save` or a service would go on after cdisk, writing where the next
    run cleans up. A parent that died before the prctl (which the kernel then never signals) ends the child here.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != _forked_by:
        os._exit(1)


class _Guard:
    """One `sh` per cdisk process, in a process group of its own, that waits for EOF on a pipe only cdisk
    holds the other end of, then kills its whole group (`kill -9 0`). Every bwrap joins that group before it
    execs (Popen's process_group: setpgid in the child), and every process bwrap makes stays in it — the pid 1 of
    the sandbox's pid namespace included, whose death ends everything inside — so whenever cdisk ends, SIGKILL
    included, the kernel closes the pipe and nothing of any sandbox outlives it. Race-free: a bwrap is in the
    group before it runs, and the group's id (the pid of the sh that started the guard) is not reused while the
    guard, a member, lives. It costs two sh per run (~1 ms), not one per sandbox; the guard is no child of cdisk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._group = 0  # the group's id: the pid of the sh that started the guard (kept while the group lives)
        self._pidfd = -1  # the guard's: readable once it ended
        self._owner = 0  # the process that started it: a forked child starts its own
        self._pipe = -1  # the write end, held until this process ends: never written to

    def group(self) -> int:
        """The guard's process group, the guard started first if this process has none running."""
        with self._lock:
            if self._owner != os.getpid() or _ended(self._pidfd):
                self._close()
                read, self._pipe = os.pipe()  # both ends close-on-exec: no child but the guard gets one
                try:
                    said, started = b"", 0
                    with suppress(OSError), subprocess.Popen(GUARD_ARGV, stdin=read, stdout=subprocess.PIPE,
                                                             stderr=subprocess.DEVNULL, process_group=0) as starter:
                        assert starter.stdout is not None
                        said, started = starter.stdout.readline(), starter.pid
                    if not said.strip().isdigit():  # /bin/sh could not start, or could not fork (the process limit)
                        os.close(self._pipe)
                        self._pipe = -1
                        raise ToolError("cannot start the guard of the sandboxes (/bin/sh) this run's bwrap must join; "
                                        "check that /bin/sh runs and the process limit (ulimit -u)", GUARD_ARGV)
                    guard = int(said)
                finally:
                    os.close(read)
                # Alive until the pipe closes: this pidfd names the guard, no process that reused its pid.
                self._pidfd = os.pidfd_open(guard)
                self._group = started
                if not self._owner:
                    atexit.register(self.close)
                self._owner = os.getpid()
            return self._group

    def _close(self) -> None:
        for fd in (self._pipe, self._pidfd):
            if fd >= 0 and self._owner == os.getpid():
                os.close(fd)
        self._pipe = self._pidfd = -1

    def close(self) -> None:
        """At exit: end the guard (and with it what is left of its group) and wait until it has, so that nothing of
        cdisk's outlives it even for the millisecond the guard takes."""
        with self._lock:
            if self._owner != os.getpid() or self._pidfd < 0:
                return
            os.close(self._pipe)
            self._pipe = -1
            select.select([self._pidfd], [], [], 5.0)
            self._close()


def _ended(pidfd: int) -> bool:
    """Whether the process of `pidfd` ended (True for no pidfd)."""
    return pidfd < 0 or bool(select.select([pidfd], [], [], 0)[0])


_GUARD = _Guard()


def _is_guarded(cmd: Any) -> bool:
    return os.path.basename(str(getattr(cmd, "executable", cmd))) == GUARDED


def spawn(cmd: Any, argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`cmd argv` started as a child; bwrap in the guard's process group (`_Guard`), so that no process it makes
    outlives cdisk, however cdisk ends: SIGKILL included. (A child that leads a session of its own cannot join.)
    """
    if _is_guarded(cmd) and not popen.get("start_new_session"):
        popen["process_group"] = _GUARD.group()
    proc: subprocess.Popen[bytes] = cmd.popen(list(argv), **popen)
    return proc


def guard_group() -> int:
    """The process group a bwrap started without `spawn()` joins (Popen's process_group)."""
    return _GUARD.group()


def command(name: str, package: str) -> Any:
    """The plumbum command `name`, or a clear error naming the package that provides it."""
    from plumbum import local
    from plumbum.commands.processes import CommandNotFound

    try:
        return local[name]
    except CommandNotFound:
        raise ToolError(f"{name} is not installed; install it (Debian/Ubuntu: apt-get install {package})") \
            from None


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0, group: bool = False) -> None:
    """Terminate `proc` (with `group`, its whole process group) if it still runs, kill it after
    `grace` seconds, and reap it.
    """
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM, group)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL, group)
            proc.wait()


def _signal(proc: subprocess.Popen[bytes], signum: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


@contextmanager
def running(cmd: Any, argv: Sequence[str], group: bool = False, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd argv` as a child that is stopped and reaped however the block ends (error, Ctrl-C, SIGTERM).

    With `group` it leads a session of its own, and the whole session is stopped.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    proc = spawn(cmd, argv, start_new_session=group, **popen)
    try:
        yield proc
    finally:
        stop(proc, group=group)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def drain(proc: subprocess.Popen[bytes], on_stdout: Callable[[bytes], None], timeout: float | None = None,
          bound: float | None = None) -> bytes:
    """Read the child's stdout and stderr until both close, and return the tail of its stderr.

    stdout goes to `on_stdout` chunk by chunk; of stderr only the last `STDERR_TAIL` bytes are kept.
    Both pipes are read together, so a child that fills one while we wait on the other cannot stall.

    Raises:
        LimitExceeded: `timeout` seconds passed; the child is then killed. The message names `bound` (the
            limit the caller set, where `timeout` is what was left of it), else `timeout`.
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    tail = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                proc.kill()
                raise LimitExceeded(f"ran longer than {timeout if bound is None else bound:g} s", argv_of(proc),
                                    bytes(tail).decode(errors="replace"))
            for key, _ in selector.select(wait):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    on_stdout(chunk)
                else:
                    tail += chunk
                    del tail[:-STDERR_TAIL]
    return bytes(tail)


class StderrTail(threading.Thread):
    """Reads a long-running child's stderr to its end, keeping only the last `STDERR_TAIL` bytes: a server that
    logs each failed client never fills its pipe (and stalls), and never grows our memory.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        # A descriptor of its own: whoever closes `stream` meanwhile cannot hand this thread another file's.
        self._fd = os.dup(stream.fileno())
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.start()

    def run(self) -> None:
        try:
            while chunk := os.read(self._fd, _CHUNK):
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-STDERR_TAIL]
        finally:
            os.close(self._fd)

    def text(self) -> str:
        """What the child printed last (after it ended: all it left)."""
        self.join(1.0)
        with self._lock:
            return bytes(self._tail).decode(errors="replace")


def argv_of(proc: subprocess.Popen[bytes]) -> list[str]:
    """The whole argv a child was started with, as text (for a ToolError)."""
    return [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]


def run(cmd: Any, argv: Sequence[str], timeout: float | None = None, stdout_limit: int = STDOUT_LIMIT,
        **popen: Any) -> tuple[int, str, str]:
    """Run to the end and return (exit code, stdout, the tail of stderr) as text.

    Raises:
        LimitExceeded: the child ran past `timeout` seconds or printed more than `stdout_limit` bytes.
    """
    out = bytearray()
    with running(cmd, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen) as proc:
        def collect(chunk: bytes) -> None:
            out.extend(chunk)
            if len(out) > stdout_limit:
                proc.kill()
                raise LimitExceeded(f"printed more than {stdout_limit} bytes", argv_of(proc))

        started = time.monotonic()
        err = drain(proc, collect, timeout)
        try:  # a child that closed its pipes but runs on is bound by the same timeout
            code = proc.wait(None if timeout is None else max(0.1, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            raise LimitExceeded(f"ran longer than {timeout:g} s", argv_of(proc)) from None
    return code, out.decode(errors="replace"), err.decode(errors="replace")


def run_together(*runs: tuple[Any, Sequence[str], dict[str, Any]], timeout: float | None = None,
                 stdout_limit: int = STDOUT_LIMIT) -> list[tuple[int, str, str]]:
    """Several children (each `(cmd, argv, popen)`) started at once and run to the end as `run` runs one, each
    under the same bounds (`timeout` from their common start, `stdout_limit`); stopped and reaped however this ends.
    Their outputs are read one child after the other: one that waits meanwhile on a full pipe only waits.

    Returns (exit code, stdout, the tail of stderr) of each, in order.

    Raises:
        LimitExceeded: a child ran past `timeout` seconds or printed more than `stdout_limit` bytes (its argv says
            which; `finished` holds the results of the children before it, for a caller that judges them first).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    results: list[tuple[int, str, str]] = []
    with ExitStack() as stack:
        procs = [stack.enter_context(running(cmd, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen))
                 for cmd, argv, popen in runs]
        for proc in procs:
            out = bytearray()

            def collect(chunk: bytes, proc: subprocess.Popen[bytes] = proc, out: bytearray = out) -> None:
                out.extend(chunk)
                if len(out) > stdout_limit:
                    proc.kill()
                    raise LimitExceeded(f"printed more than {stdout_limit} bytes", argv_of(proc))

            # A child that ended before the deadline is read to its end, even when the one before took the time.
            left = None if deadline is None else max(deadline - time.monotonic(), 1.0)
            try:
                err = drain(proc, collect, left, timeout)
            except LimitExceeded as error:
                error.finished = results
                raise
            results.append((proc.wait(), out.decode(errors="replace"), err.decode(errors="replace")))
    return results


def killed_by_signal(code: int) -> bool:
    """Whether an exit code says the child died of a signal: negative from Popen, 128+N through a shell
    or a sandbox that passes the status on.
    """
    return code < 0 or code > 128


def file_tail(f: IO[bytes]) -> bytes:
    """The last `STDERR_TAIL` bytes of a file a child wrote its stderr to."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - STDERR_TAIL))
    return f.read()


def last_line(stderr: str, code: int | None) -> str:
    """The line of a tool's stderr that says what went wrong (its last), or its exit code."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {code}"
