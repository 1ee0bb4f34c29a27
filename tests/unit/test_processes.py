"""Children whose output an image can drive: nothing of theirs is buffered whole, and none outlives its deadline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdisk.core import processes
from cdisk.core.errors import LimitExceeded
from cdisk.core.processes import STDERR_TAIL

PYTHON = processes.command(sys.executable, "python3")


def _child(code: str) -> list[str]:
    return ["-c", code]


def test_only_the_tail_of_a_flood_on_stderr_is_kept() -> None:
    flood = "import os\nfor _ in range(3000): os.write(2, b'x' * 65535 + b'\\n')\nos.write(2, b'last words\\n')"
    code, out, err = processes.run(PYTHON, _child(flood))
    assert code == 0 and out == ""
    assert len(err) <= STDERR_TAIL
    assert processes.last_line(err, code) == "last words"


def test_a_child_filling_stderr_while_we_read_stdout_does_not_stall() -> None:
    # 8 MB on stderr before a word on stdout: a reader that waits on stdout alone would wait forever.
    both = "import os\nfor _ in range(128): os.write(2, b'e' * 65536)\nos.write(1, b'done')"
    code, out, _ = processes.run(PYTHON, _child(both), timeout=60)
    assert (code, out) == (0, "done")


def test_stdout_past_its_bound_stops_the_child() -> None:
    endless = "import os\nwhile True: os.write(1, b'y' * 65536)"
    with pytest.raises(LimitExceeded, match=r"printed more than 1048576 bytes and was stopped"):
        processes.run(PYTHON, _child(endless), stdout_limit=1 << 20)


def test_a_child_past_its_deadline_is_killed_and_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = (f"import os, time\nopen({str(pid_file)!r} + '.new', 'w').write(str(os.getpid()))\n"
               f"os.rename({str(pid_file)!r} + '.new', {str(pid_file)!r})\ntime.sleep(600)")
    with pytest.raises(LimitExceeded, match=r"ran longer than 0.5 s and was stopped"):
        processes.run(PYTHON, _child(sleeper), timeout=0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # gone, not a zombie: reaped


def test_drain_streams_stdout_in_order() -> None:
    chunks: list[bytes] = []
    with processes.running(PYTHON, _child("import os\nfor i in range(100): os.write(1, b'%d,' % i)"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        processes.drain(proc, chunks.append)
        assert proc.wait() == 0
    assert b"".join(chunks) == b"".join(b"%d," % i for i in range(100))


@pytest.mark.parametrize(("code", "killed"), [(0, False), (1, False), (63, False), (128, False), (137, True),
                                              (152, True), (-9, True)])
def test_killed_by_signal(code: int, killed: bool) -> None:
    assert processes.killed_by_signal(code) is killed


def test_a_guard_that_cannot_start_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # No /bin/sh to start (or no process left to fork): a ToolError naming the fix, not a ValueError.
    from cdisk.core.errors import ToolError

    guard = processes._Guard()
    monkeypatch.setattr(processes, "GUARD_ARGV", ("/nonexistent/sh", "-c", "echo 1"))
    with pytest.raises(ToolError, match=r"cannot start the guard of the sandboxes .*ulimit -u"):
        guard.group()
    monkeypatch.setattr(processes, "GUARD_ARGV", ("/bin/sh", "-c", "echo no"))
    with pytest.raises(ToolError, match=r"cannot start the guard"):
        guard.group()


def _meeting(mine: Path, other: Path) -> list[str]:
    """A child that says it started (`mine`), then waits up to 20 s for the other one's word: only children that run
    at once both get it."""
    return _child(f"import os, sys, time\nopen({str(mine)!r}, 'w').close()\nend = time.monotonic() + 20\n"
                  f"while not os.path.exists({str(other)!r}):\n    time.sleep(0.01)\n"
                  "    if time.monotonic() > end: sys.exit(9)\nprint('met')")


def test_children_run_together_each_under_its_bounds(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    results = processes.run_together((PYTHON, _meeting(a, b), {}), (PYTHON, _meeting(b, a), {}), timeout=60)
    assert results == [(0, "met\n", ""), (0, "met\n", "")]


def test_children_run_together_are_stopped_and_reaped_past_their_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = (f"import os, time\nopen({str(pid_file)!r} + '.new', 'w').write(str(os.getpid()))\n"
               f"os.rename({str(pid_file)!r} + '.new', {str(pid_file)!r})\ntime.sleep(600)")
    # Floods only once the sleeper runs (a loaded machine may start it late): the sleeper is then surely one to stop.
    endless = (f"import os, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
               "while True: os.write(1, b'y' * 65536)")
    with pytest.raises(LimitExceeded, match=r"printed more than 1048576 bytes") as raised:
        processes.run_together((PYTHON, _child("print('quick')"), {}), (PYTHON, _child(endless), {}),
                               (PYTHON, _child(sleeper), {}), stdout_limit=1 << 20)
    assert raised.value.argv[-1] == endless
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the sleeper, stopped with the rest: reaped
    with pytest.raises(LimitExceeded, match=r"ran longer than"):
        processes.run_together((PYTHON, _child("print('quick')"), {}), (PYTHON, _child(sleeper), {}), timeout=0.5)


def test_a_child_run_together_past_the_deadline_is_told_by_the_bound_with_the_ones_before_it() -> None:
    """The second child's wait is what the first left of the deadline; its message names the limit itself, and
    the first child's answer is kept for a caller that judges it first."""
    with pytest.raises(LimitExceeded, match=r"ran longer than 4 s") as raised:
        processes.run_together((PYTHON, _child("import time; time.sleep(1); print('first')"), {}),
                               (PYTHON, _child("import time; time.sleep(60)"), {}), timeout=4)
    assert raised.value.finished == [(0, "first\n", "")]
