"""Removal under load, short (issue 23, item 3): scripts/stress.py on each engine with ~8 runs at once while
its loop removes and reloads the images (`rmi -f` + load, `image prune -a -f`). Every run writes its image's
disk or fails with one documented line; nothing is left. The full stress (50 at once) is `scripts/stress`,
docs/bench/README.md "Stress: removal under load".

The stress is also run with a cdisk that does everything wrong, to show that it sees what it must: a wrong disk,
an error that is not one line, a temp name left beside TARGET, a mount left in the store, a process left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tagged_processes

ROOT = Path(__file__).resolve().parents[2]
STRESS = ROOT / "scripts" / "stress.py"

pytestmark = pytest.mark.needs("qemu-img", "qemu-io", "bwrap")


def stress(*args: str) -> tuple[int, dict[str, Any], str]:
    """scripts/stress.py --json ARGS: its exit code, its result and its stderr."""
    run = subprocess.run([sys.executable, STRESS, "--json", *args], capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout), run.stderr


# docker: a dockerd of the stress's own, started as the suite's is: the stress prunes every image of its daemon,
# and the suite's may hold what an earlier test left (it refuses a daemon that holds images).
@pytest.mark.parametrize("engine", [pytest.param("podman", marks=pytest.mark.needs("podman")),
                                    pytest.param("docker", marks=pytest.mark.needs("docker", "dockerd"))])
def test_every_run_writes_its_disk_or_fails_with_one_line(engine: str) -> None:
    code, result, err = stress("--engines", engine, "--runs", "16", "--concurrency", "8", "--seconds", "60")
    report = json.dumps(result["failures"], indent=1) + err
    tally = result["engines"][engine]
    assert result["wrong_disks"] == 0, report
    assert tally["bad_failures"] == 0, report
    assert tally["left_targets"] == 0, report  # a convert that failed left nothing at TARGET
    assert result["leftovers"] == {"mounts": [], "temp_names": [], "processes": []}, report
    assert code == 0 and result["passed"], report
    assert tally["runs"] >= 8 and tally["ok"] >= 1, report  # it ran, and the loop did not starve every run
    assert set(tally["failed"]) <= {"3", "4", "5", "7"}, report  # gone, no disk, refused, the engine failed
    assert sum(n for op, n in tally["removals"].items() if op.startswith(("rmi", "prune"))) >= 1, report


# A cdisk that gets everything wrong: convert writes another image's disk, leaves a temp name beside TARGET and a
# process behind; refresh leaves a mount under the private store (as root) and dies with a traceback.
LEFT_PROCESS = "sleep 29.25"
WRONG_CDISK = r'''
import os, subprocess, sys, tempfile
from pathlib import Path
args = sys.argv[1:]
command, fmt, image, target = args[0], args[args.index("-O") + 1], args[-2], Path(args[-1])
work = target.parent.parent
if command == "convert":
    wrong = work / "disks" / ("white.raw" if "/base:" in image else "base.qcow2")
    subprocess.run(["qemu-img", "convert", "-O", fmt, wrong, target], check=True)
    (target.parent / f".{target.name}.abcdefgh.cdisk-part").write_bytes(b"partial")
    subprocess.Popen(LEFT_PROCESS.split(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.exit(0)
if os.geteuid() == 0:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tempfile.mkdtemp(dir=work / "store" / "graph")], check=True)
sys.exit("Traceback (most recent call last):\n  ...\nKeyError: 'layers'")
'''.replace("LEFT_PROCESS", repr(LEFT_PROCESS))


@pytest.mark.needs("podman")
def test_the_stress_sees_wrong_disks_bad_errors_and_leftovers(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_cdisk.py"
    wrong.write_text(WRONG_CDISK)
    try:
        code, result, err = stress("--engines", "podman", "--runs", "6", "--concurrency", "3", "--seed", "1",
                                   "--cdisk", f"{sys.executable} {wrong}")
    finally:
        for pid in tagged_processes((LEFT_PROCESS,)):
            os.kill(pid, signal.SIGKILL)
    kinds = [failure["kind"] for failure in result["failures"]]
    tally = result["engines"]["podman"]
    converts = sum(1 for failure in result["failures"] if failure["argv"][2] == "convert")
    assert code == 1 and not result["passed"], err
    assert tally["runs"] == 6 and tally["ok"] == 0
    assert 0 < converts < 6, "seed 1 plans both commands (3 converts and 3 refreshes as root)"
    assert kinds.count("wrong-disk") == result["wrong_disks"] == converts
    assert kinds.count("bad-failure") == tally["bad_failures"] == 6 - converts
    assert all("holds the disk of image" in f["detail"] for f in result["failures"] if f["kind"] == "wrong-disk")
    left = result["leftovers"]
    assert len(left["temp_names"]) == converts and all(".cdisk-part" in name for name in left["temp_names"])
    assert any(cmdline.startswith(LEFT_PROCESS) for cmdline in left["processes"]), left
    if os.geteuid() == 0:
        assert len(left["mounts"]) == 6 - converts, left
