"""Child processes that never outlive the block that started them."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cdisk.core.errors import ToolError


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
    proc: subprocess.Popen[bytes] = cmd.popen(list(argv), stdin=subprocess.DEVNULL, start_new_session=group,
                                              **popen)
    try:
        yield proc
    finally:
        stop(proc, group=group)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def run(cmd: Any, argv: Sequence[str], **popen: Any) -> tuple[int, str, str]:
    """Run to the end and return (exit code, stdout, stderr) as text."""
    with running(cmd, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen) as proc:
        out, err = proc.communicate()
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def last_line(stderr: str, code: int | None) -> str:
    """The line of a tool's stderr that says what went wrong (its last), or its exit code."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {code}"
