"""Nothing that grows after a SIGKILL: convert and refresh killed at random points (and at the two that matter: a
partial disk beside TARGET, the save method's copy of the layers), then run once more on the same TARGET, leave
only TARGET (and refresh's record and lock) beside it, and no temp dir, mount or process.

A killed run is started by a sentinel that is a child subreaper (`_SENTINEL`): whatever the run started and left
orphaned is reparented to the sentinel rather than to init, so "no process of the killed run is left" is checked
by ancestry, whatever the process is called or whatever environment it was given (a bare bwrap included).

The mount method is killed at its partial disk only: a `podman image mount` stays counted in podman's store until
the next mount gives it back from the dead run's record, and a kill at random may fall in the millisecond between
podman's mount and the record, which leaves it counted (cdisk(1) FILES).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Images, Remote, _mounts_of, cdisk, same_disk, tagged_processes, wait_for
from tests.images import sh

KILLABLE = [("podman", "layers"), ("podman", "save"), ("docker", "save"), ("docker", "layers")]
RANDOM_KILLS = 6
TLS = ("--tls-verify", "false")


def _holds(directory: Path, needle: str) -> Callable[[], bool]:
    return lambda: any(needle in name for name in os.listdir(directory))


# A child subreaper that starts cdisk (argv after "--"), SIGKILLs it when told on stdin ("kill\n") or, with
# "probe", DELAY seconds after cdisk's first bwrap appears, then reaps and lists what of the run lives on (its
# own children: anything orphaned was reparented to it) until nothing does or SETTLE seconds pass; prints that
# list as JSON and kills it (so that a failing test leaves nothing either).
_SENTINEL = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
mode, delay, settle = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
argv = sys.argv[sys.argv.index("--") + 1:]
me = os.getpid()

def children():
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), comm, cmdline)
    return found

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

cdisk = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(cdisk.pid, flush=True)
if mode == "probe":
    while cdisk.poll() is None and not any(parent == cdisk.pid and comm == "bwrap"
                                           for parent, comm, _ in children().values()):
        time.sleep(0.0005)
    time.sleep(delay)
else:
    sys.stdin.readline()
cdisk.send_signal(signal.SIGKILL)
cdisk.wait()
deadline = time.monotonic() + settle
while True:
    reap()
    left = {pid: cmdline for pid, (parent, _, cmdline) in children().items() if parent == me}
    if not left or time.monotonic() > deadline:
        break
    time.sleep(0.01)
print(json.dumps(left), flush=True)
for pid in left:
    os.kill(pid, signal.SIGKILL)
"""
# How long what a killed run started may take to end: the guard and parent-death signals act in milliseconds;
# a podman save told to stop cleans up first.
SETTLE = 30.0


def _ended(pid: int) -> bool:
    """Whether the process `pid` (a child of the sentinel, which reaps only after the kill) has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _left_by_killed_run(argv: list[str], mode: str = "told", delay: float = 0.0, settle: float = SETTLE,
                        ready: Callable[[], bool] | float | None = None,
                        prefix: list[str] | None = None) -> dict[str, str]:
    """Run cdisk with `argv` under the sentinel, SIGKILL it (`mode` "probe": `delay` s after its first bwrap;
    else when `ready` holds, after `ready` seconds, or when it ended first), and return what of it outlived
    `settle` seconds: pid -> command line. `prefix` replaces `python -m cdisk`."""
    run = prefix or [sys.executable, "-m", "cdisk"]
    proc = subprocess.Popen([sys.executable, "-c", _SENTINEL, mode, str(delay), str(settle), "--", *run, *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        cdisk_pid = int(proc.stdout.readline())
        if mode != "probe":
            if callable(ready):
                wait_for(lambda: ready() or _ended(cdisk_pid), 120)
            elif ready is not None:
                time.sleep(ready)
            proc.stdin.write("kill\n")
            proc.stdin.flush()
        left: dict[str, str] = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(settle + 60)
        proc.stdout.close()
    return left


def _kill_when(argv: list[str], ready: Callable[[], bool] | float) -> None:
    """Start cdisk with `argv`, SIGKILL it when `ready` holds (or after `ready` seconds, or when it ended first),
    and check that nothing it ran lives on: no process of its ancestry (qemu-img, its sandbox, podman, docker,
    whatever it is called), none carrying the test's tag."""
    assert _left_by_killed_run(argv, ready=ready) == {}
    wait_for(lambda: tagged_processes(("qemu-img", "bwrap", "podman save", "docker --host", "docker save",
                                       "podman system service", "qemu-storage-daemon")) == {}, 60)


def _kills(argv: list[str], directory: Path, method: str, seconds: float, seed: int) -> None:
    """Kill the run of `argv` at a partial disk, at the save method's copy, and at `RANDOM_KILLS` random points
    within `seconds` (what a whole run takes)."""
    _kill_when(argv, _holds(directory, ".cdisk-part"))
    if method == "save":
        _kill_when(argv, _holds(directory, ".cdisk-save-"))
    rng = random.Random(seed)
    for _ in range(RANDOM_KILLS):
        _kill_when(argv, rng.uniform(0.0, seconds))


def _timed(argv: list[str]) -> float:
    start = time.monotonic()
    result = cdisk(*argv)
    assert result.code == 0, result.err
    return time.monotonic() - start


def _no_cdisk_temp_data() -> None:
    temp = Path(os.environ["TMPDIR"])
    assert [p.name for p in temp.iterdir() if "cdisk" in p.name] == []


@pytest.mark.parametrize("reading", KILLABLE, indirect=True, ids=["-".join(r) for r in KILLABLE])
def test_convert_killed_anywhere_then_run_once_more(images: Images, tmp_path: Path, engine: str,
                                                    method: str) -> None:
    disk = images.disk(size="64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 0 64M", disk)  # qemu-img writes long enough to be caught
    name = images.build({"disk.qcow2": disk})
    out = tmp_path / "out"
    out.mkdir()
    target = out / "vm.raw"
    argv = ["convert", "--engine", engine, "--method", method, "--force", name, str(target)]
    seconds = _timed(argv)
    target.unlink()
    _kills(argv, out, method, seconds, seed=sum(map(ord, engine + method)))
    _timed(argv)
    assert os.listdir(out) == ["vm.raw"]
    assert same_disk(disk, "qcow2", target, "raw")
    _no_cdisk_temp_data()


@pytest.mark.parametrize("reading", [("podman", "save")], indirect=True, ids=["podman-save"])
def test_save_killed_with_a_tmpdir_then_run_once_more(images: Images, tmp_path: Path, engine: str,
                                                      method: str) -> None:
    """--tmpdir elsewhere than TARGET's directory: the save copy a killed run left there goes with the next run."""
    disk = images.disk(size="64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x5d 0 64M", disk)
    name = images.build({"disk.qcow2": disk})
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    argv = ["convert", "--engine", engine, "--method", method, "--tmpdir", str(scratch), "--force", name,
            str(out / "vm.raw")]
    _kill_when(argv, _holds(scratch, ".cdisk-save-"))
    assert os.listdir(scratch) != []
    _timed(argv)
    assert os.listdir(scratch) == []
    assert os.listdir(out) == ["vm.raw"]
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")


@pytest.mark.parametrize("method", ["layers", "save"])
def test_refresh_killed_anywhere_then_run_once_more(remote: Remote, tmp_path: Path, method: str) -> None:
    disk = remote.push(0x21, size="64M", fill=True)
    target = tmp_path / "vm.raw"
    argv = ["refresh", "-q", *TLS, "--method", method, remote.ref, str(target)]
    seconds = _timed(argv)
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)  # each killed run starts from nothing: it converts, and is killed doing so
    _kills(argv, tmp_path, method, seconds, seed={"layers": 1, "save": 2}[method])
    _timed(argv)
    assert sorted(os.listdir(tmp_path)) == [".vm.raw.cdisk.lock", "vm.raw", "vm.raw.cdisk.json"]
    assert same_disk(disk, "qcow2", target, "raw")
    _no_cdisk_temp_data()


_FAILING_SAVE = """#!/bin/sh
# podman whose save fails as a layer's integrity error does, leaving its copy of the layer in TMPDIR (podman's own
# habit: /var/tmp/NNNNNNNNN when TMPDIR is not set)
if [ "$1" = save ]; then
    left="${{TMPDIR:-/var/tmp}}/123456789"
    head -c 65536 /dev/zero > "$left"
    echo "$left" >> {log}
    echo 'Error: copying layer: digest mismatch' >&2
    exit 125
fi
exec {real} "$@"
"""


def test_a_failed_podman_save_leaves_no_layer_copy(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "left.log"
    real = sh("sh", "-c", "command -v podman").stdout.strip()
    (bin_dir / "podman").write_text(_FAILING_SAVE.format(log=log, real=real))
    (bin_dir / "podman").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    result = cdisk("convert", "--engine", "podman", "--method", "save", name, out / "vm.raw",
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.code == 7 and "podman save failed: Error: copying layer: digest mismatch" in result.err
    [left] = log.read_text().splitlines()
    assert ".cdisk-save-" in left, "podman's TMPDIR is inside cdisk's own temp dir"
    assert not os.path.exists(left)
    assert os.listdir(out) == []


_HOLDS_A_SERVICE = """
import sys, time
import cdisk.core.engines.podman as podman
with podman.private_service():
    print("up", flush=True)
    time.sleep(600)
"""


@pytest.mark.needs("podman")
def test_a_killed_runs_service_dir_is_removed_by_the_next() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDS_A_SERVICE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "up\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    wait_for(lambda: tagged_processes(("podman system service",)) == {}, 60)  # the kernel's parent-death signal
    temp = Path(os.environ["TMPDIR"])
    [dead] = [p.name for p in temp.iterdir() if p.name.startswith("cdisk-podman-")]
    subprocess.run([sys.executable, "-c", "import cdisk.core.engines.podman as p\nwith p.private_service(): pass"],
                   check=True, timeout=120)
    assert not (temp / dead).exists()
    _no_cdisk_temp_data()


@pytest.mark.parametrize("reading", [("podman", "mount")], indirect=True, ids=["podman-mount"])
def test_a_killed_runs_mount_is_given_back_by_the_next(images: Images, tmp_path: Path, engine: str,
                                                       method: str) -> None:
    # podman counts an image mount until it is given back: killed while it converts, the run leaves its mount,
    # and its record, from which the next mount gives it back.
    if os.geteuid() != 0:
        pytest.skip("the mount method mounts as root")
    disk = images.disk(size="64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x5d 0 64M", disk)
    name = images.build({"disk.qcow2": disk})
    out = tmp_path / "out"
    out.mkdir()
    target = out / "vm.raw"
    argv = ["convert", "--engine", engine, "--method", method, "--force", name, str(target)]
    for _ in range(3):  # a run that ended between the sight of its partial disk and the kill (seen in CI): again
        _kill_when(argv, _holds(out, ".cdisk-part"))
        if _mounts_of({name}):
            break
    assert _mounts_of({name}), "the killed run left no mount: nothing was tested"
    _timed(argv)
    assert _mounts_of({name}) == set(), "the dead run's mount was not given back"
    assert os.listdir(out) == ["vm.raw"]
    assert same_disk(disk, "qcow2", target, "raw")


def test_a_killed_builds_work_dir_is_removed_by_the_next(tmp_path: Path) -> None:
    # A build's work dir holds a layer of the disk's size: killed while it writes, the next build removes it.
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(48 << 20))  # random: gzip takes a second or more, long enough to be killed in
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-m", "cdisk", "build", "-q", "--tmpdir", str(work), "--layer-compression", "gzip"]
    proc = subprocess.Popen([*argv, "--output", f"oci:{tmp_path / 'killed'}", str(disk), "localhost/vm:1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(p.name.startswith(".cdisk-build-") for p in work.iterdir()), 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [dead] = [p.name for p in work.iterdir()]
    built = cdisk("build", "-q", "--tmpdir", work, "--output", f"oci:{tmp_path / 'built'}", disk, "localhost/vm:1")
    assert built.code == 0, built.err
    assert list(work.iterdir()) == [], dead


def test_a_killed_builds_output_is_removed_by_the_next(tmp_path: Path) -> None:
    # An archive is written under a temp name beside it, a copy of the layer: killed while it is written, the
    # next build beside it removes it (an OCI layout directory's temp likewise).
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        for _ in range(160):
            f.write(os.urandom(1 << 20))
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, "-m", "cdisk", "build", "-q", "--tmpdir", str(tmp_path), "--raw"]
    proc = subprocess.Popen([*argv, "--output", f"oci-archive:{out / 'killed.tar'}", str(disk), "localhost/vm:1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(".cdisk-" in p.name for p in out.iterdir()) or proc.poll() is not None, 120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    dead = [p.name for p in out.iterdir()]
    assert [n for n in dead if n.startswith(".killed.tar.") and n.endswith(".cdisk-part")], dead
    built = cdisk("build", "-q", "--tmpdir", tmp_path, "--output", f"oci-archive:{out / 'built.tar'}", disk,
                  "localhost/vm:1")
    assert built.code == 0, built.err
    assert sorted(p.name for p in out.iterdir()) == ["built.tar"], dead


PROBE_KILLS = 30


def _oci_image(tmp_path: Path) -> str:
    """An image as an OCI layout (no engine: a run reaches its sandbox probe at once)."""
    disk = tmp_path / "disk.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", disk, "16M")
    layout = tmp_path / "oci"
    built = cdisk("build", "-q", "--output", f"oci:{layout}", disk, "localhost/vm:1")
    assert built.code == 0, built.err
    return f"oci:{layout}"


@pytest.mark.needs("bwrap", "qemu-img")
def test_killed_during_the_sandbox_probe_leaves_no_process(tmp_path: Path) -> None:
    """The probe's bwrap starts first in every run: killed 0-80 ms after it appears (its outer bwrap dead, its
    pid 1 perhaps still without a parent-death signal), nothing of the run is left."""
    argv = ["ls", _oci_image(tmp_path)]
    rng = random.Random(23)
    for _ in range(PROBE_KILLS):
        assert _left_by_killed_run(argv, "probe", rng.uniform(0.0, 0.08), settle=5.0) == {}


_BWRAP_WITH_A_STRAY = """#!/bin/sh
# bwrap, and a process of its making that misses cdisk's death as bwrap's pid 1 can (it sets its parent-death
# signal only once its namespaces are built; its outer bwrap may die first)
sleep 600 </dev/null >/dev/null 2>&1 &
exec {real} "$@"
"""


@pytest.mark.needs("bwrap", "qemu-img")
def test_no_process_a_bwrap_makes_outlives_cdisk(tmp_path: Path) -> None:
    """Whatever a bwrap started, with or without a parent-death signal, ends with cdisk: killed during the probe,
    during qemu-img, or ending by itself."""
    image = _oci_image(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = sh("sh", "-c", "command -v bwrap").stdout.strip()
    (bin_dir / "bwrap").write_text(_BWRAP_WITH_A_STRAY.format(real=real))
    (bin_dir / "bwrap").chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    argv = ["env", f"PATH={path}", sys.executable, "-m", "cdisk"]
    rng = random.Random(4)
    for delay in [0.0, *(rng.uniform(0.0, 0.08) for _ in range(5))]:
        left = _left_by_killed_run(["ls", image], "probe", delay, settle=5.0, prefix=argv)
        assert left == {}, left
    out = tmp_path / "vm.raw"
    left = _left_by_killed_run(["convert", image, str(out)], settle=5.0, prefix=argv, ready=lambda: False)
    assert left == {}, left  # the run ended by itself (the kill came after): its exit alone ends the strays


@pytest.mark.needs("bwrap", "qemu-img", "qemu-storage-daemon")
def test_a_killed_serve_leaves_nothing_once_another_serve_ran(tmp_path: Path) -> None:
    """serve killed while it serves: its server dies with it at once; its private socket dir (a SIGKILL runs no
    `finally`) goes with the next serve's."""
    image = _oci_image(tmp_path)
    home = tmp_path / "run"
    home.mkdir(mode=0o700)
    run = ["env", f"XDG_RUNTIME_DIR={home}", sys.executable, "-m", "cdisk"]
    left = _left_by_killed_run(["serve", image], prefix=run, ready=lambda: any(home.glob("cdisk-serve-*/nbd.sock")))
    assert left == {}, left
    [dead] = [p.name for p in home.iterdir()]
    proc = subprocess.Popen([*run, "serve", "--json", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        served = json.loads(proc.stdout.readline())
        assert dead not in served["socket"]
        assert [p.name for p in home.iterdir()] == [Path(served["socket"]).parent.name]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert list(home.iterdir()) == []
