"""Talking to podman: the user's live socket, a private service otherwise, and pulls from a real registry."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Images, cdisk, same_disk
from tests.images import sh


def _wait_for(predicate, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def user_socket(tmp_path: Path) -> Iterator[Path]:
    """A podman service as a user's systemd socket would run it."""
    path = tmp_path / "user" / "podman.sock"
    path.parent.mkdir()
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{path}"])
    _wait_for(path.is_socket)
    yield path
    proc.terminate()
    proc.wait(10)


def test_live_user_socket_is_used(images: Images, tmp_path: Path, user_socket: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = cdisk("convert", "-v", name, tmp_path / "out.raw", env={"CONTAINER_HOST": f"unix://{user_socket}"})
    assert result.code == 0, result.err
    assert f"podman API at {user_socket}" in result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_private_service_when_no_socket_answers(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    dead = tmp_path / "dead.sock"
    result = cdisk("convert", "-v", name, tmp_path / "out.raw", env={"CONTAINER_HOST": f"unix://{dead}"})
    assert result.code == 0, result.err
    assert "private podman service" in result.err


def test_remote_container_host_is_refused(tmp_path: Path) -> None:
    result = cdisk("convert", "-q", "x", tmp_path / "out.raw", env={"CONTAINER_HOST": "tcp://10.0.0.1:1"})
    assert result.code == 3 and "not a local unix socket" in result.err


def test_private_service_dies_with_a_killed_cdisk() -> None:
    # SIGKILL runs no `finally`: the kernel's parent-death signal must stop the service.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import cdisk.core.podman as p, time\nwith p.private_service():\n time.sleep(120)"]
    )

    def service_runs() -> bool:
        return "cdisk-podman-" in sh("pgrep", "-af", "podman system service", check=False).stdout

    _wait_for(service_runs)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not service_runs())
    for leftover in Path("/tmp").glob("cdisk-podman-*"):  # only the dir is left to a SIGKILL; not a process
        sh("rm", "-rf", leftover)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with temp storage; stopped afterwards."""
    if not sh("which", "docker-registry", check=False).stdout:
        pytest.fail("docker-registry is missing: run scripts/test, which installs it")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait_for(up)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_pull_from_a_registry(images: Images, tmp_path: Path, registry: str) -> None:
    disk = images.disk()
    local = images.build({"disk.qcow2": disk})
    remote = f"{registry}/cdisk/pull-test:{local.rsplit(':', 1)[0].rsplit('-', 1)[1]}"
    sh("podman", "push", "-q", "--tls-verify=false", local, remote)
    try:
        refused = cdisk("convert", "-q", "--pull", "never", remote, tmp_path / "never.raw")
        assert refused.code == 3
        result = cdisk("convert", "-v", "--tls-verify", "false", remote, tmp_path / "out.raw")
        assert result.code == 0, result.err
        assert f"pulling {remote}" in result.err
        assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
        again = cdisk("convert", "-v", "--tls-verify", "false", remote, tmp_path / "again.raw")
        assert again.code == 0 and "pulling" not in again.err  # missing: the cached image serves
        always = cdisk("convert", "-v", "--pull", "always", "--tls-verify", "false", remote, tmp_path / "always.raw")
        assert always.code == 0 and "pulling" in always.err
    finally:
        sh("podman", "rmi", "-f", remote, check=False)


def test_pull_over_tls_from_a_plain_http_registry_fails_clearly(tmp_path: Path, registry: str) -> None:
    result = cdisk("convert", "-q", f"{registry}/cdisk/none:1", tmp_path / "out.raw")
    assert result.code == 3 and result.err.startswith("cdisk: error: cannot pull")
