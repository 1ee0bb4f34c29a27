"""The private podman service cdisk starts dies with the process that started it, even one killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import private_services, wait_for
from tests.images import sh


def _gone(pid: int) -> bool:
    """No process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.needs("podman")
def test_private_service_dies_with_a_killed_cdisk() -> None:
    # SIGKILL runs no `finally`: the kernel's parent-death signal must stop the service.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import cdisk.core.engines.podman as p, time\nwith p.private_service():\n time.sleep(120)"]
    )
    try:
        wait_for(lambda: private_services(proc.pid) != [] or proc.poll() is not None, 60)
        [service] = private_services(proc.pid)  # its own: another run's service is neither watched nor touched
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: _gone(service))
    # Only the dir (in this test's own TMPDIR) is left to a SIGKILL; not a process.
    for leftover in Path(os.environ["TMPDIR"]).glob("cdisk-podman-*"):
        sh("rm", "-rf", leftover)
