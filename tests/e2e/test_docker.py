"""The docker engine against the suite's own dockerd: pulls from the test registry (`newer` by digest), the
choice of engine, a host without podman, and what docker cannot do. The convert cases themselves run on
docker through `helpers.READINGS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.engine_fakes import RecordingEngine
from tests.helpers import Images, Remote, Run, assert_one_line_error, cdisk, path_without, same_disk
from tests.images import sh

pytestmark = pytest.mark.needs("docker", "dockerd", "podman", "qemu-img", "qemu-io", "bwrap")


@pytest.fixture(autouse=True)
def engine(docker_host: str) -> str:
    """This module's images are built in docker's store."""
    return "docker"


def last_json(result: Run) -> dict[str, object]:
    assert result.code == 0, result.err
    return dict(json.loads(result.out.splitlines()[-1]))


def test_pull_newer_by_digest_and_the_recorded_engine(remote: Remote, tmp_path: Path) -> None:
    first = remote.push(0x11)
    target = tmp_path / "vm.raw"
    data = last_json(cdisk("refresh", "--json", "--engine", "docker", remote.ref, target))
    assert (data["action"], data["engine"]) == ("updated", "docker")
    assert same_disk(first, "qcow2", target, "raw")
    assert json.loads((tmp_path / "vm.raw.cdisk.json").read_text())["engine"] == "docker"

    # No --engine now: the record says docker, so podman (asked first otherwise) never pulls it.
    data = last_json(cdisk("refresh", "--json", remote.ref, target))
    assert (data["action"], data["engine"]) == ("unchanged", "docker")
    second = remote.push(0x22)
    data = last_json(cdisk("refresh", "--json", remote.ref, target))
    assert (data["action"], data["engine"]) == ("updated", "docker")
    assert same_disk(second, "qcow2", target, "raw")
    assert sh("podman", "image", "exists", remote.ref, check=False).returncode == 1

    # What was pulled has a digest: the image is found by it.
    digest = json.loads(sh("docker", "image", "inspect", remote.ref).stdout)[0]["RepoDigests"][0]
    by_digest = cdisk("convert", "--json", "--pull", "never", "--engine", "docker", digest, tmp_path / "d.raw")
    assert last_json(by_digest)["digest"] == digest.split("@")[1]
    assert same_disk(second, "qcow2", tmp_path / "d.raw", "raw")


def test_pull_progress_and_a_failed_pull(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0x33)
    result = cdisk("convert", "-v", "--engine", "docker", remote.ref, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert f"pulling {remote.ref}" in result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    absent = cdisk("convert", "-q", "--engine", "docker", remote.ref + "-absent", tmp_path / "no.raw")
    assert_one_line_error(absent, 3, f"{remote.ref}-absent is not in docker's store, and pulling it failed: manifest "
                                     f"for {remote.ref}-absent not found: manifest unknown; check the name (`docker "
                                     "images`)")
    assert not (tmp_path / "no.raw").exists()


def test_tls_verify_must_agree_with_the_daemon(remote: Remote, tmp_path: Path) -> None:
    remote.push(0x44)
    # docker takes 127.0.0.0/8 as an insecure registry: asking for TLS there cannot be honoured.
    result = cdisk("convert", "-q", "--engine", "docker", "--tls-verify", "true", remote.ref, tmp_path / "out.raw")
    assert_one_line_error(result, 2, "insecure-registries")
    allowed = cdisk("convert", "-q", "--engine", "docker", "--tls-verify", "false", remote.ref, tmp_path / "ok.raw")
    assert allowed.code == 0, allowed.err


def test_auto_takes_the_engine_that_holds_the_image(images: Images, tmp_path: Path) -> None:
    in_docker = images.disk("docker.qcow2", pattern=0x55)
    name = images.build({"disk.qcow2": in_docker})
    data = last_json(cdisk("convert", "--json", name, tmp_path / "a.raw"))
    assert (data["engine"], data["method"]) == ("docker", "layers")
    assert same_disk(in_docker, "qcow2", tmp_path / "a.raw", "raw")

    # The same name in both stores: podman's is taken.
    podman_images = Images(images.workdir, "podman")
    in_podman = podman_images.disk("podman.qcow2", pattern=0x66)
    built = podman_images.build({"disk.qcow2": in_podman})
    sh("podman", "tag", built, name)
    podman_images.names.append(name)
    try:
        data = last_json(cdisk("convert", "--json", name, tmp_path / "b.raw"))
        assert data["engine"] == "podman"
        assert same_disk(in_podman, "qcow2", tmp_path / "b.raw", "raw")
        assert last_json(cdisk("ls", "--json", "--engine", "docker", name))["engine"] == "docker"
    finally:
        podman_images.remove()


def test_a_host_without_podman(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    env = {"PATH": path_without(("podman",), tmp_path / "bin")}
    target = tmp_path / "out.raw"
    assert last_json(cdisk("convert", "--json", name, target, env=env))["engine"] == "docker"
    assert same_disk(disk, "qcow2", target, "raw")
    listing = last_json(cdisk("ls", "--json", name, env=env))
    assert listing["engine"] == "docker" and len(listing["disks"]) == 1  # type: ignore[arg-type]
    assert last_json(cdisk("verify", "--json", name, target, env=env))["identical"] is True
    refreshed = tmp_path / "r.raw"
    assert last_json(cdisk("refresh", "--json", name, refreshed, env=env))["action"] == "updated"
    assert last_json(cdisk("refresh", "--json", name, refreshed, env=env))["action"] == "unchanged"
    # --engine podman there is one clear line naming the package.
    result = cdisk("convert", "--engine", "podman", name, tmp_path / "p.raw", env=env)
    assert result.code == 7 and "podman is not installed" in result.err


def test_mount_is_refused_with_the_way_out(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("convert", "-q", "--engine", "docker", "--method", "mount", name, tmp_path / "out.raw")
    assert_one_line_error(result, 2, "--method save")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("host", "code", "says"), [
    ("tcp://127.0.0.1:2375", 3, "not a local unix socket"),
    ("unix:///nonexistent/docker.sock", 7, "does not answer"),
])
def test_docker_host_is_honoured_and_checked(tmp_path: Path, host: str, code: int, says: str) -> None:
    result = cdisk("convert", "-q", "--engine", "docker", "localhost/x:1", tmp_path / "out.raw",
                   env={"DOCKER_HOST": host})
    assert_one_line_error(result, code, says)


def test_another_users_daemon_is_not_trusted_with_host_paths(images: Images, docker_host: str,
                                                             tmp_path: Path) -> None:
    # A daemon whose socket is neither root's nor ours could name /etc as a layer directory: its image is then
    # read from `docker save` (image bytes only), never from the directories it names.
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    socket = Path(docker_host.removeprefix("unix://"))
    os.chown(socket, 65534, -1)
    try:
        data = last_json(cdisk("convert", "--json", "--engine", "docker", name, tmp_path / "out.raw"))
        assert data["method"] == "save"
        assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
        refused = cdisk("convert", "-q", "--engine", "docker", "--method", "layers", name, tmp_path / "no.raw")
        assert refused.code == 7 and "may be trusted" in refused.err
    finally:
        os.chown(socket, 0, -1)


def test_auto_passes_over_an_engine_that_fails(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text("#!/bin/sh\necho 'Error: database is locked' >&2\nexit 125\n")
    (bin_dir / "podman").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CONTAINER_HOST": f"unix://{tmp_path}/none.sock"}
    result = cdisk("convert", "-v", "--json", name, tmp_path / "out.raw", env=env)
    assert last_json(result)["engine"] == "docker"
    assert "podman could not look" in result.err and "database is locked" in result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    # Where no engine could answer, the failure is the answer.
    absent = cdisk("convert", "-q", "--engine", "auto", "localhost/cdisk-test-absent:1", tmp_path / "no.raw",
                   env={**env, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert_one_line_error(absent, 7, "database is locked")


def test_the_recorded_engine_serves_only_the_image_it_recorded(images: Images, tmp_path: Path) -> None:
    in_docker = images.disk("d.qcow2", pattern=0x71)
    docker_name = images.build({"disk.qcow2": in_docker})
    target = tmp_path / "vm.raw"
    assert last_json(cdisk("refresh", "--json", "--pull", "never", docker_name, target))["engine"] == "docker"
    podman_images = Images(images.workdir, "podman")
    in_podman = podman_images.disk("p.qcow2", pattern=0x72)
    try:
        podman_name = podman_images.build({"disk.qcow2": in_podman})
        # Another IMAGE for the same TARGET: not looked for in docker's store because the record says docker.
        data = last_json(cdisk("refresh", "--json", "--pull", "never", podman_name, target))
        assert (data["action"], data["engine"]) == ("updated", "podman")
        assert same_disk(in_podman, "qcow2", target, "raw")
    finally:
        podman_images.remove()


def test_every_docker_call_ends_its_switches_before_the_image(images: Images, tmp_path: Path) -> None:
    # `--` before every image name or ID cdisk hands docker: none can be read as one of docker's switches.
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    docker = RecordingEngine(tmp_path / "bin", "docker")
    result = cdisk("convert", "-q", "--engine", "docker", "--method", "save", name, tmp_path / "out.raw",
                   env=docker.env)
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    naming = [call.argv for call in docker.calls() if call.argv[:2] == ["image", "inspect"] or call.argv[0] == "save"]
    assert {argv[0] for argv in naming} == {"image", "save"}, docker.calls()
    assert all(argv[-2] == "--" for argv in naming), naming


def test_a_dockerd_of_the_suites_own_leaves_nothing_mounted() -> None:
    """dockerd 26 (Debian 13) binds its data root onto itself and leaves that mount when it exits: the suite's
    daemon (and the stress script's) takes it back, so its dir goes whole (was: a mount per run, and a dir that
    cannot be removed)."""
    import shutil
    import tempfile

    from tests.mounts import mounts_under
    from tests.private_dockerd import private_dockerd

    root = Path(tempfile.mkdtemp(prefix="dd-"))  # the test's own TMPDIR, swept by the suite: a short path (the
    # daemon's containerd socket lies under it, within a socket path's 108 bytes)
    env = {name: value for name, value in os.environ.items() if name not in ("TMPDIR", "DOCKER_HOST")}
    with private_dockerd(root, env) as host:
        assert sh("docker", "--host", host, "version").returncode == 0
    assert mounts_under([str(root)]) == set()
    shutil.rmtree(root)
