"""A long-running command beside scripts and systemd: its pid file, its readiness told over a real NOTIFY_SOCKET,
detaching from the shell once ready (in a child process of its own), and its errors to syslog once detached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.commands import daemon
from cdisk.core.errors import UsageError

# --- the pid file -----------------------------------------------------------------------------------------------


def test_no_pid_file_asked_writes_nothing(tmp_path: Path) -> None:
    with daemon.pid_file(None):
        assert os.listdir(tmp_path) == []


def test_the_pid_file_holds_our_pid_while_the_block_runs(tmp_path: Path) -> None:
    path = tmp_path / "cdisk.pid"
    with daemon.pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert os.listdir(tmp_path) == ["cdisk.pid"]  # written whole, by rename: no temp file beside it
    assert os.listdir(tmp_path) == []


def test_the_pid_file_is_removed_however_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "cdisk.pid"
    with pytest.raises(KeyboardInterrupt), daemon.pid_file(str(path)):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_a_relative_pid_file_stays_where_it_was_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with daemon.pid_file("cdisk.pid"):
        os.chdir("/")
    assert os.listdir(tmp_path) == []


def test_a_pid_file_taken_over_meanwhile_is_left_to_its_new_owner(tmp_path: Path) -> None:
    path = tmp_path / "cdisk.pid"
    with daemon.pid_file(str(path)):
        path.write_text("1\n")
    assert path.read_text() == "1\n"


def test_a_pid_file_naming_a_running_process_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "cdisk.pid"
    running = os.getppid()
    path.write_text(f"{running}\n")
    with pytest.raises(UsageError) as refused, daemon.pid_file(str(path)):
        raise AssertionError("the block must not run")
    assert refused.value.message == (f"{path} names process {running}, which still runs; stop it (cdisk serve --stop "
                                     "SOCKET) or choose another --pid-file")
    assert refused.value.exit_code == 2
    assert path.read_text() == f"{running}\n" and os.listdir(tmp_path) == ["cdisk.pid"]


def test_a_pid_file_naming_a_process_gone_is_taken_over(tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names nothing now
    path = tmp_path / "cdisk.pid"
    path.write_text(f"{ended.pid}\n")
    with daemon.pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("left", ["", "not a pid\n", "-5\n", f"{os.getpid()}\n"],
                         ids=["empty", "garbage", "negative", "ours"])
def test_a_pid_file_naming_no_other_process_is_taken_over(tmp_path: Path, left: str) -> None:
    path = tmp_path / "cdisk.pid"
    path.write_text(left)
    with daemon.pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == []


def test_a_pid_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "cdisk.pid"
    with pytest.raises(UsageError) as refused, daemon.pid_file(str(path)):
        raise AssertionError("the block must not run")
    assert refused.value.message == f"cannot write --pid-file {path}: No such file or directory; choose another"


# --- readiness, told to systemd ---------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit a unix socket's address (pytest's own can be too long)."""
    made = Path(tempfile.mkdtemp(prefix="notify-"))
    try:
        yield made
    finally:
        shutil.rmtree(made)


def listening(address: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    conn.bind(address)
    conn.settimeout(30)
    return conn


def test_ready_tells_the_notify_socket_and_our_pid(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = str(short_dir / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", where)
    stdout_before = os.readlink("/proc/self/fd/1")
    with listening(where) as conn:
        daemon.ready()
        assert conn.recv(4096) == f"READY=1\nMAINPID={os.getpid()}".encode()
    assert os.readlink("/proc/self/fd/1") == stdout_before  # not detached: its output stays where it was


def test_ready_tells_an_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cdisk-test-notify-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
    with listening(f"\0{name}") as conn:
        daemon.ready()
        assert conn.recv(4096) == f"READY=1\nMAINPID={os.getpid()}".encode()


def test_ready_with_a_notify_socket_nobody_listens_on_goes_on(short_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody"))
    daemon.ready()
    monkeypatch.delenv("NOTIFY_SOCKET")
    daemon.ready()


# --- detaching, in a child process of its own -------------------------------------------------------------------

# argv: a directory for the child's reports, and what the child does. The parent prints "parent: CODE" and
# exits with the code detach() returned. The child reports by files, atomically: its output is not ours.
_DETACHING = r"""
import fcntl, json, os, signal, sys, time
from pathlib import Path
from cdisk.core.commands import daemon
from cdisk.core.errors import Interrupted
from cdisk.core.signals import stop_on_signals

reports, mode = Path(sys.argv[1]), sys.argv[2]

def report(name, value):
    (reports / f".{name}").write_text(json.dumps(value))
    os.rename(reports / f".{name}", reports / name)

stop_on_signals()
try:
    code = daemon.detach()
except Interrupted as stop:
    print("parent: interrupted", flush=True)
    sys.exit(stop.exit_code)
if code is not None:
    print(f"parent: {code}", flush=True)
    sys.exit(code)
report("child", {"pid": os.getpid(), "sid": os.getsid(0), "stdin": os.readlink("/proc/self/fd/0")})
if mode == "ready":
    # The parent held still while the child prints more than it relays at a time, and says it is ready: what is
    # still in the pipe then is relayed all the same, before the parent ends.
    fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20)
    os.kill(os.getppid(), signal.SIGSTOP)
    print("child: before ready", flush=True)
    print("child: a warning", file=sys.stderr, flush=True)
    sys.stdout.write("x" * 300_000 + "\n")
    daemon.ready()
    os.kill(os.getppid(), signal.SIGCONT)
    print("child: after ready, to nowhere", flush=True)
    while not (reports / "go").exists():
        time.sleep(0.01)
    report("after", {"stdout": os.readlink("/proc/self/fd/1"), "stderr": os.readlink("/proc/self/fd/2")})
elif mode == "fails":
    print("child: cannot start", file=sys.stderr, flush=True)
    sys.exit(6)
elif mode == "killed":
    os.kill(os.getpid(), 9)
elif mode == "waits":
    try:
        print("child: waiting", flush=True)
        while True:
            time.sleep(0.01)
    except Interrupted as stop:
        report("cleaned", stop.signum)
        sys.exit(stop.exit_code)
elif mode == "logs":
    daemon.log_error("an error while attached")
    daemon.ready()
    daemon.log_error("an error once detached")
    report("after", "logged")
"""


def wait_for(path: Path, seconds: float = 30) -> object:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.01)
    return json.loads(path.read_text())


def wait_gone(pid: int, seconds: float = 30) -> None:
    """Until `pid` runs no more (gone, or a zombie its new parent has yet to reap)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.01)


def detaching(reports: Path, mode: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    # stdin a pipe of the test's: the child must let go of it too.
    return subprocess.Popen([*prefix, sys.executable, "-c", _DETACHING, str(reports), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_detach_relays_the_childs_output_until_it_is_ready_then_lets_it_run_alone(tmp_path: Path,
                                                                                  short_dir: Path) -> None:
    where = str(short_dir / "notify")
    with listening(where) as notify:
        parent = detaching(tmp_path, "ready", {"NOTIFY_SOCKET": where})
        out, err = parent.communicate(timeout=60)
        child = wait_for(tmp_path / "child")
        assert isinstance(child, dict)
        try:
            assert parent.returncode == 0
            assert out == "child: before ready\n" + "x" * 300_000 + "\nparent: 0\n"
            assert err == "child: a warning\n"
            assert child["sid"] == child["pid"] != parent.pid  # a session of its own
            assert child["stdin"] == "/dev/null"
            assert notify.recv(4096) == f"READY=1\nMAINPID={child['pid']}".encode()
            assert not (tmp_path / "after").exists()  # the parent ended while the child runs on
        finally:
            (tmp_path / "go").touch()
        assert wait_for(tmp_path / "after") == {"stdout": "/dev/null", "stderr": "/dev/null"}
        wait_gone(child["pid"])


def test_a_child_that_ends_before_it_is_ready_gives_its_exit_code(tmp_path: Path) -> None:
    parent = detaching(tmp_path, "fails")
    out, err = parent.communicate(timeout=60)
    assert (parent.returncode, out, err) == (6, "parent: 6\n", "child: cannot start\n")


def test_a_child_killed_before_it_is_ready_gives_128_plus_the_signal(tmp_path: Path) -> None:
    parent = detaching(tmp_path, "killed")
    out, err = parent.communicate(timeout=60)
    assert (parent.returncode, out, err) == (128 + signal.SIGKILL, f"parent: {128 + signal.SIGKILL}\n", "")


def stop_left_child(pid: int, reports: Path) -> None:
    """Kill the detached child `pid` if it still runs (only if it is this test's: its argv names `reports`)."""
    try:
        if str(reports) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def test_interrupting_the_parent_before_ready_stops_the_child_too(tmp_path: Path) -> None:
    parent = detaching(tmp_path, "waits")
    child: object = None
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == "child: waiting\n"
        child = wait_for(tmp_path / "child")
        assert isinstance(child, dict)
        parent.send_signal(signal.SIGTERM)
        out, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
            if isinstance(child, dict):  # the parent never stopped it: this test does
                stop_left_child(child["pid"], tmp_path)
    assert (parent.returncode, out, err) == (128 + signal.SIGTERM, "parent: interrupted\n", "")
    assert json.loads((tmp_path / "cleaned").read_text()) == signal.SIGTERM  # it cleaned up after itself
    with pytest.raises(ProcessLookupError):
        os.kill(child["pid"], 0)  # and the parent reaped it


# A private mount namespace whose /dev holds only null and, at /dev/log, the test's own socket: syslog() there
# reaches the test, and nothing of the host's logging is touched.
_PRIVATE_DEV_LOG = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && touch /dev/log && '
                    'mount --bind "$0" /dev/log && exec "$@"')


def test_a_detached_commands_errors_go_to_syslog_and_only_then(tmp_path: Path, short_dir: Path) -> None:
    log = str(short_dir / "log")
    with listening(log) as syslog:
        probe = subprocess.run([*_PRIVATE_DEV_LOG, log, "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
        parent = detaching(tmp_path, "logs", prefix=(*_PRIVATE_DEV_LOG, log))
        out, err = parent.communicate(timeout=60)
        assert (parent.returncode, out, err) == (0, "parent: 0\n", "")
        child = wait_for(tmp_path / "child")
        assert isinstance(child, dict)
        assert wait_for(tmp_path / "after") == "logged"
        wait_gone(child["pid"])
        syslog.settimeout(0)
        received = []
        while True:
            try:
                received.append(syslog.recv(4096))
            except BlockingIOError:
                break
    assert len(received) == 1, received
    # <11>: facility user (8) + priority err (3), under the name cdisk with the detached child's pid.
    assert re.fullmatch(rb"<11>\w{3} [ \d]\d \d\d:\d\d:\d\d cdisk\[(\d+)\]: an error once detached", received[0])
    assert received[0].split(b"[")[1].split(b"]")[0] == str(child["pid"]).encode()


def test_a_fifo_as_pid_file_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "serve.pid")
    with daemon.pid_file(str(tmp_path / "serve.pid")):
        assert (tmp_path / "serve.pid").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "serve.pid").exists()

