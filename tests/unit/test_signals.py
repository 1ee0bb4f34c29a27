"""A process stopped by SIGINT, SIGTERM or SIGHUP as cleanly as by Ctrl-C: `Interrupted` once, cleanup then
undisturbed by another signal; and a file past RLIMIT_FSIZE an error, not a death by SIGXFSZ. Each in a child
process of its own, so that the test run's own signal handling is never touched.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STOPPING = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]

# Says "waiting" once its handlers are in, waits for a signal; on Interrupted says so, waits for a line on
# stdin (the test sends more signals meanwhile), then says how its handlers stand and exits as cdisk does.
_WAITER = """
import signal, sys, time
from cdisk.core.errors import Interrupted
from cdisk.core.signals import stop_on_signals
stop_on_signals()
try:
    print("waiting", flush=True)
    while True:
        time.sleep(0.01)
except Interrupted as stop:
    print(f"interrupted {stop.signum}", flush=True)
    sys.stdin.readline()
    names = {signal.SIG_IGN: "ignored", signal.SIG_DFL: "default"}
    print(" ".join(names.get(signal.getsignal(s), "handled") for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)),
          flush=True)
    sys.exit(stop.exit_code)
"""


@contextmanager
def child(script: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("signum", STOPPING, ids=[s.name for s in STOPPING])
def test_a_stopping_signal_raises_interrupted_with_128_plus_its_number(signum: signal.Signals) -> None:
    with child(_WAITER) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signum)
        assert proc.stdout.readline() == f"interrupted {signum}\n"
        out, err = proc.communicate("\n", timeout=30)
    assert (proc.returncode, out, err) == (128 + signum, "ignored ignored ignored\n", "")


@pytest.mark.parametrize("signum", STOPPING, ids=[s.name for s in STOPPING])
def test_signals_during_cleanup_are_ignored(signum: signal.Signals) -> None:
    with child(_WAITER) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signum)
        assert proc.stdout.readline() == f"interrupted {signum}\n"
        for again in (*STOPPING, signum):  # a second Ctrl-C, a repeated SIGTERM, the terminal gone
            proc.send_signal(again)
        out, err = proc.communicate("\n", timeout=30)
    # Still there to finish its cleanup, and it ends with the first signal's code, not a second Interrupted.
    assert (proc.returncode, out, err) == (128 + signum, "ignored ignored ignored\n", "")


def test_without_a_signal_the_handlers_raise_and_sigxfsz_is_ignored() -> None:
    script = (
        "import signal\n"
        "from cdisk.core.signals import _interrupt, stop_on_signals\n"
        "stop_on_signals()\n"
        "print([signal.getsignal(s) is _interrupt for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],\n"
        "      signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN,\n"
        "      signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[True, True, True] True True\n", "")


def test_a_file_past_rlimit_fsize_fails_with_efbig_instead_of_killing(tmp_path: Path) -> None:
    target = tmp_path / "big"
    # Python itself starts with SIGXFSZ ignored: set back to its default, as a process may inherit it.
    script = (
        "import errno, os, signal\n"
        "from cdisk.core.signals import stop_on_signals\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
        "stop_on_signals()\n"
        f"fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "try:\n"
        "    while True:\n"
        "        os.write(fd, bytes(8192))  # a short write up to the limit, then one past it\n"
        "except OSError as error:\n"
        "    print(errno.errorcode[error.errno])\n"
    )

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          preexec_fn=small_files)
    assert (done.returncode, done.stdout, done.stderr) == (0, "EFBIG\n", "")
    # The same write without cdisk's handlers is what it guards against: a death by SIGXFSZ.
    bare = subprocess.run([sys.executable, "-c", script.replace("stop_on_signals()\n", "")], capture_output=True,
                          text=True, timeout=30, preexec_fn=small_files)
    assert bare.returncode == -signal.SIGXFSZ
    assert os.path.getsize(target) == 4096
