"""Child processes that never outlive the block that started them."""

from __future__ import annotations

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


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate `proc` if it still runs, kill it after `grace` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running(cmd: Any, argv: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd argv` as a child that is stopped and reaped however the block ends (error, Ctrl-C, SIGTERM)."""
    proc: subprocess.Popen[bytes] = cmd.popen(list(argv), stdin=subprocess.DEVNULL, **popen)
    try:
        yield proc
    finally:
        stop(proc)
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
