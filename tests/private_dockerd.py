"""A docker daemon of one's own, for the test suite and `scripts/stress` alike: a private socket, data and exec
roots in a directory of the caller's, no networking of its own (no iptables, no bridge), overlay2; stopped when the
block ends, and when its starter dies (SIGKILL included: a parent-death signal). No pytest here: the stress script
imports it too."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cdisk.core.processes import die_with_parent
from tests.mounts import mounts_under

START_SECONDS = 60


@contextmanager
def private_dockerd(root: Path, env: Mapping[str, str]) -> Iterator[str]:
    """dockerd with its socket, data, exec root, pid file and log (`dockerd.log`) in `root`, run with `env`; its
    DOCKER_HOST once it answers.

    Raises:
        RuntimeError: it ended or did not answer within START_SECONDS (the log's tail says why).
    """
    host = f"unix://{root}/docker.sock"
    with open(root / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            ["dockerd", "--host", host, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "dockerd.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--storage-driver=overlay2", "--group", "root"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=dict(env), start_new_session=True,
            preexec_fn=die_with_parent)
        try:
            deadline = time.monotonic() + START_SECONDS
            while subprocess.run(["docker", "--host", host, "version"], capture_output=True).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
                time.sleep(0.1)
            yield host
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            unmount_left(root)


def unmount_left(root: Path) -> None:
    """What a dockerd that has ended left mounted under `root`, unmounted, deepest first: dockerd 26 (Debian 13)
    binds its data root onto itself (to make it private) and leaves that mount when it exits; 20.10 did not."""
    for point in sorted(mounts_under([str(root)]), reverse=True):
        subprocess.run(["umount", point], capture_output=True)
