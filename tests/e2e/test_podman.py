"""Talking to podman: the user's live socket, a private service otherwise, and pulls from a real registry."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engine_fakes import RecordingEngine
from tests.helpers import Images, assert_one_line_error, cdisk, same_disk, wait_for
from tests.images import sh


@pytest.fixture
def user_socket(tmp_path: Path) -> Iterator[Path]:
    """A podman service as a user's systemd socket would run it."""
    path = tmp_path / "user" / "podman.sock"
    path.parent.mkdir()
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{path}"])
    wait_for(path.is_socket)
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


def test_no_service_for_a_local_lookup(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    dead = tmp_path / "dead.sock"
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", "-v", name, tmp_path / "out.raw", env={"CONTAINER_HOST": f"unix://{dead}", **podman.env})
    assert result.code == 0, result.err
    assert f"found {name} in the local store (podman CLI: no API at {dead})" in result.err
    assert "private podman service" not in result.err
    assert podman.services() == [] and podman.calls() != []  # podman ran, and never as a service
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


@pytest.mark.needs("qemu-img", "bwrap")
@pytest.mark.parametrize("method", ["save", "mount"])
def test_every_podman_call_ends_its_switches_before_the_image(images: Images, tmp_path: Path, method: str) -> None:
    # `--` before every image name or ID cdisk hands podman: none can be read as one of podman's switches.
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", "-q", "--method", method, name, tmp_path / "out.raw",
                   env={"CONTAINER_HOST": f"unix://{tmp_path / 'dead.sock'}", **podman.env})
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    naming = [call.argv for call in podman.calls() if call.argv[:2] in (["image", "inspect"], ["image", "mount"],
                                                                          ["image", "unmount"], ["image", "exists"])
              or call.argv[:1] == ["save"]]
    wanted = {"save": {"inspect", "save"}, "mount": {"inspect", "mount", "unmount"}}[method]
    assert {argv[0] if argv[0] == "save" else argv[1] for argv in naming} >= wanted, podman.calls()
    assert all(argv[-2] == "--" for argv in naming), naming


def test_private_service_to_pull(images: Images, tmp_path: Path, registry: str) -> None:
    disk = images.disk()
    local = images.build({"disk.qcow2": disk})
    remote = f"{registry}/cdisk/private-{local.rsplit(':', 1)[0].rsplit('-', 1)[1]}:1"
    sh("podman", "push", "-q", "--tls-verify=false", local, remote)
    dead = tmp_path / "dead.sock"
    podman = RecordingEngine(tmp_path / "bin")
    try:
        result = cdisk("convert", "-v", "--tls-verify", "false", remote, tmp_path / "out.raw",
                       env={"CONTAINER_HOST": f"unix://{dead}", **podman.env})
        assert result.code == 0, result.err
        assert "starting a private podman service" in result.err and f"pulling {remote}" in result.err
        [service] = podman.services()
        assert service.argv[-1].startswith(f"unix://{os.environ['TMPDIR']}/cdisk-podman-"), service.argv
        assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    finally:
        sh("podman", "rmi", "-f", remote, check=False)


def test_remote_container_host_is_refused(tmp_path: Path) -> None:
    result = cdisk("convert", "-q", "x", tmp_path / "out.raw", env={"CONTAINER_HOST": "tcp://10.0.0.1:1"})
    assert_one_line_error(result, 3, "not a local unix socket")
    assert list(tmp_path.iterdir()) == []


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
    result = cdisk("convert", "-q", "--engine", "podman", f"{registry}/cdisk/none:1", tmp_path / "out.raw")
    assert_one_line_error(result, 3, f"{registry}/cdisk/none:1 is not in podman's store, and pulling it failed: http: "
                                     "server gave HTTP response to HTTPS client; if the registry speaks plain HTTP, "
                                     "pass --tls-verify=false")


@contextmanager
def insecure_registry(registry: str) -> Iterator[None]:
    """A registries.conf.d drop-in that declares `registry` plain HTTP (as a lab mirror would be)."""
    dropin = Path("/etc/containers/registries.conf.d") / f"zz-cdisk-test-{uuid.uuid4().hex[:12]}.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    try:
        dropin.write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
        yield
    finally:
        dropin.unlink(missing_ok=True)


@pytest.fixture
def pushed(images: Images, registry: str) -> Iterator[tuple[str, Path]]:
    disk = images.disk()
    local = images.build({"disk.qcow2": disk})
    remote = f"{registry}/cdisk/insecure-{uuid.uuid4().hex[:8]}:1"
    sh("podman", "push", "-q", "--tls-verify=false", local, remote)
    yield remote, disk
    sh("podman", "rmi", "-f", remote, check=False)


# A dead CONTAINER_HOST makes every pull start a private service, which reads registries.conf afresh.
def _private(tmp_path: Path) -> dict[str, str]:
    return {"CONTAINER_HOST": f"unix://{tmp_path / 'dead.sock'}"}


@pytest.mark.parametrize("command", ["convert", "refresh"])
def test_registries_conf_decides_tls_by_default(pushed: tuple[str, Path], registry: str, tmp_path: Path,
                                                command: str) -> None:
    remote, disk = pushed
    with insecure_registry(registry):
        result = cdisk(command, "-q", remote, tmp_path / "out.raw", env=_private(tmp_path))
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_registries_conf_decides_tls_for_ls(pushed: tuple[str, Path], registry: str, tmp_path: Path) -> None:
    remote, _ = pushed
    with insecure_registry(registry):
        result = cdisk("ls", "--json", remote, env=_private(tmp_path))
    assert result.code == 0, result.err
    assert json.loads(result.out)["disks"][0]["path"] == "/disk/disk.qcow2"


@pytest.mark.parametrize("command", ["convert", "refresh"])
def test_tls_verify_true_overrides_registries_conf(pushed: tuple[str, Path], registry: str, tmp_path: Path,
                                                  command: str) -> None:
    remote, _ = pushed
    with insecure_registry(registry):
        result = cdisk(command, "-q", "--tls-verify", "true", remote, tmp_path / "out.raw", env=_private(tmp_path))
    assert_one_line_error(result, 3, "is not in podman's store, and pulling it failed: http: server gave HTTP "
                                     "response to HTTPS client")
    assert not (tmp_path / "out.raw").exists()


def test_tls_verify_false_overrides_registries_conf(pushed: tuple[str, Path], tmp_path: Path) -> None:
    remote, disk = pushed  # no drop-in: registries.conf would require TLS
    result = cdisk("convert", "-q", "--tls-verify", "false", remote, tmp_path / "out.raw", env=_private(tmp_path))
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


# --- refresh: --pull newer asks the registry with skopeo, and says when it cannot -------------------------------

@pytest.mark.needs("skopeo")
def test_an_unchanged_refresh_starts_no_service(pushed: tuple[str, Path], tmp_path: Path) -> None:
    remote, disk = pushed
    target = tmp_path / "vm.raw"
    first = cdisk("refresh", "--json", "--tls-verify", "false", remote, target, env=_private(tmp_path))
    assert first.code == 0 and json.loads(first.out)["action"] == "updated", first.err
    podman = RecordingEngine(tmp_path / "bin")
    again = cdisk("refresh", "-v", "--json", "--tls-verify", "false", remote, target,
                  env={**_private(tmp_path), **podman.env})
    assert again.code == 0 and json.loads(again.out)["action"] == "unchanged", again.err
    assert f"asking the registry whether {remote} moved" in again.err
    assert "private podman service" not in again.err and podman.services() == []
    assert same_disk(disk, "qcow2", target, "raw")


@pytest.mark.needs("skopeo")
def test_refresh_warns_when_the_registry_does_not_answer(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    local = images.build({"disk.qcow2": disk})
    unanswered = f"127.0.0.1:1/cdisk/{uuid.uuid4().hex[:8]}:1"  # nothing listens on port 1
    sh("podman", "tag", local, unanswered)
    images.names.append(unanswered)
    target = tmp_path / "vm.raw"
    podman = RecordingEngine(tmp_path / "bin")
    for action in ("updated", "unchanged"):
        result = cdisk("refresh", "-v", "--json", unanswered, target, env={**_private(tmp_path), **podman.env})
        # Not checked (exit 10): the target is made from the local image, and the run says the registry was not asked.
        assert result.code == 10 and json.loads(result.out)["action"] == action, result.err
        assert json.loads(result.out)["checked"] is False
        assert (f"the registry did not answer for {unanswered} (127.0.0.1:1: ") in result.err
        assert f"{unanswered} is not checked; the local image serves" in result.err
    assert podman.services() == []
    assert same_disk(disk, "qcow2", target, "raw")
