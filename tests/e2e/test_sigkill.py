"""Nothing that grows after a SIGKILL: convert and refresh killed at random points (and at the two that matter: a
partial disk beside TARGET, the save method's copy of the layers), then run once more on the same TARGET, leave
only TARGET (and refresh's record and lock) beside it, and no temp dir, mount or process.

The mount method is not among them: a `podman image mount` that a SIGKILL cut off stays counted in podman's store,
and cdisk does not take back a count it cannot tell from another user's (docs/architecture.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Images, Remote, cdisk, same_disk, tagged_processes, wait_for
from tests.images import sh

KILLABLE = [("podman", "layers"), ("podman", "save"), ("docker", "save"), ("docker", "layers")]
RANDOM_KILLS = 6
TLS = ("--tls-verify", "false")


def _holds(directory: Path, needle: str) -> Callable[[], bool]:
    return lambda: any(needle in name for name in os.listdir(directory))


def _kill_when(argv: list[str], ready: Callable[[], bool] | float) -> None:
    """Start cdisk with `argv`, SIGKILL it when `ready` holds (or after `ready` seconds, or when it ended first),
    and wait until nothing it ran lives on (qemu-img in its sandbox, podman, docker)."""
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if callable(ready):
            wait_for(lambda: ready() or proc.poll() is not None, 120)
        else:
            time.sleep(ready)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_for(lambda: tagged_processes(("qemu-img", "bwrap", "podman save", "docker --host", "docker save",
                                       "podman system service")) == {}, 60)


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
