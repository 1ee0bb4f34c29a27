"""An image that is not there, as an operator meets it: a name in no store (said before the registry's answer),
`--pull never`, a local store's transport (never pulled), and a path given where an image name goes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.engine_fakes import RecordingEngine
from tests.helpers import Run, assert_one_line_error, cdisk, refused_by_podman, same_disk
from tests.images import Entry, docker_archive, layer_tar, one_disk_layout, tar_file, tar_header

pytestmark = pytest.mark.needs("podman")

def _typo() -> str:
    return f"127.0.0.1:1/cdisk/typo-{uuid.uuid4().hex[:8]}:1"  # no registry listens on port 1


@pytest.fixture
def no_docker(tmp_path: Path) -> dict[str, str]:
    """A docker pointed at a socket nobody listens on: `--engine auto` looks in podman's store only."""
    return {"DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}"}


def test_a_name_in_no_store_says_so_before_why_the_pull_failed(tmp_path: Path, no_docker: dict[str, str]) -> None:
    name = _typo()
    result = cdisk("convert", name, tmp_path / "out.raw", env=no_docker)
    refused = refused_by_podman("127.0.0.1:1")
    assert_one_line_error(result, 3, f"{name} is not in podman's store, and pulling it failed: {refused}; check the "
                                     f"name (`podman images`), or pull it (`podman pull {name}`)")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_pull_of_a_short_name_asks_for_the_full_name(tmp_path: Path, no_docker: dict[str, str]) -> None:
    # No unqualified-search registries (whatever this host's are): podman cannot resolve a short name, and
    # `podman pull NAME` would fail the same way, so the way out is the full name.
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    name = f"cdisk-short-{uuid.uuid4().hex[:8]}"
    result = cdisk("convert", name, tmp_path / "out.raw", env={**no_docker, "CONTAINERS_REGISTRIES_CONF": str(conf)})
    assert_one_line_error(result, 3, f"{name} is not in podman's store, and pulling it failed: short-name \"{name}\" "
                                     "did not resolve to an alias and no unqualified-search registries are defined")
    assert result.err.endswith("; check the name (`podman images`), or name it in full with its registry "
                               "(registry/repository:tag)\n"), result.err
    assert f"podman pull {name}" not in result.err


@pytest.mark.needs("docker", "dockerd")
def test_a_name_in_neither_store_names_both(tmp_path: Path, docker_host: str) -> None:
    name = _typo()
    result = cdisk("convert", name, tmp_path / "out.raw")
    refused = refused_by_podman("127.0.0.1:1")
    assert_one_line_error(result, 3, f"{name} is in neither podman's nor docker's store, and pulling it failed: "
                                     f"{refused}; check the name (`podman images`, `docker images`), or pull it "
                                     f"(`podman pull {name}`)")


@pytest.mark.needs("docker", "dockerd")
def test_pull_never_names_both_stores_and_runs_no_pull(tmp_path: Path, docker_host: str) -> None:
    name = _typo()
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", "--pull", "never", name, tmp_path / "out.raw", env=podman.env)
    assert_one_line_error(result, 3, f"image {name} is not in the local store (neither podman's nor docker's) and "
                                     "--pull never forbids pulling")
    assert podman.services() == []  # a pull would start one: no podman API here


@pytest.mark.parametrize("pull", [[], ["--pull", "missing"], ["--pull", "never"]])
def test_containers_storage_never_pulls(tmp_path: Path, pull: list[str]) -> None:
    name = _typo()
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", *pull, f"containers-storage:{name}", tmp_path / "out.raw", env=podman.env)
    assert_one_line_error(result, 3, f"{name} is not in podman's store, and containers-storage: names a local image, "
                                     f"which cdisk does not pull; check the name (`podman images`), or pull it "
                                     f"(`podman pull {name}`)")
    assert podman.services() == [] and all(call.argv[:1] != ["pull"] for call in podman.calls())


def test_containers_storage_with_pull_always_is_a_usage_error(tmp_path: Path) -> None:
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", "--pull", "always", "containers-storage:localhost/vm:1", tmp_path / "out.raw",
                   env=podman.env)
    assert_one_line_error(result, 2, "containers-storage:localhost/vm:1 names an image in podman's store, which cdisk "
                                     "never pulls; drop --pull always, or write docker://localhost/vm:1 to pull it")
    assert podman.calls() == []


@pytest.mark.needs("docker", "dockerd")
def test_docker_daemon_never_pulls(tmp_path: Path, docker_host: str) -> None:
    name = _typo()
    result = cdisk("refresh", f"docker-daemon:{name}", tmp_path / "out.raw")  # refresh: --pull newer
    assert_one_line_error(result, 3, f"{name} is not in docker's store, and docker-daemon: names a local image, which "
                                     "cdisk does not pull")


# --- a path where an image name goes ---------------------------------------------------------------------------

@pytest.mark.needs("qemu-img", "bwrap")
def test_a_layout_directory_as_image_suggests_oci(tmp_path: Path) -> None:
    layout, _, _ = one_disk_layout(tmp_path)
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("convert", layout, tmp_path / "out.raw", env=podman.env)
    assert_one_line_error(result, 2, f"{layout} looks like a path, not an image name; did you mean oci:{layout} "
                                     "(an OCI layout)?")
    assert podman.calls() == []  # no engine asked, nothing pulled
    suggested = cdisk("convert", f"oci:{layout}", tmp_path / "out.raw")
    assert suggested.code == 0, suggested.err


@pytest.mark.needs("qemu-img", "qemu-io", "bwrap")
def test_an_archive_as_image_suggests_its_transport(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x5a" * 65536)
    archive = docker_archive(tmp_path, [layer_tar([Entry("disk/vm.raw", disk.read_bytes())])], "localhost/vm:1")
    result = cdisk("convert", archive, tmp_path / "out.raw")
    assert_one_line_error(result, 2, f"{archive} looks like a path, not an image name; did you mean "
                                     f"docker-archive:{archive} (it is a docker archive)?")
    suggested = cdisk("convert", f"docker-archive:{archive}", tmp_path / "out.raw")
    assert suggested.code == 0, suggested.err
    assert same_disk(disk, "raw", tmp_path / "out.raw", "raw")


def test_an_oci_archive_as_image_suggests_oci_archive(tmp_path: Path) -> None:
    archive = tar_file(tmp_path / "vm.tar", [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", b"{}")])
    result = cdisk("convert", archive, tmp_path / "out.raw")
    assert_one_line_error(result, 2, f"did you mean oci-archive:{archive} (it is an OCI archive)?")


def test_a_disk_as_image_is_told_to_build(tmp_path: Path) -> None:
    disk = tmp_path / "vm.qcow2"
    disk.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(504))
    result = cdisk("convert", disk, tmp_path / "out.raw")
    assert_one_line_error(result, 2, f"{disk} is a disk image file, not a container image; convert it with qemu-img, "
                                     f"or make a containerDisk of it (`cdisk build {disk} NAME`)")


def test_an_empty_image_is_said_to_be_empty(tmp_path: Path) -> None:
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("ls", "", env=podman.env)
    assert_one_line_error(result, 2, "IMAGE is empty; name an image (name[:tag], name@digest or an ID), or an image "
                                     "file with its transport (oci:DIR, oci-archive:FILE, docker-archive:FILE)")
    assert podman.calls() == []


@pytest.mark.parametrize(("transport", "name"), [("docker://", "--version"), ("containers-storage:", "--help"),
                                              ("docker-daemon:", "-q"), ("docker://", "--pull=always")])
def test_a_switch_behind_a_transport_never_reaches_an_engine(tmp_path: Path, transport: str, name: str) -> None:
    # Once `podman image inspect --format json --version`, and a JSONDecodeError.
    podman = RecordingEngine(tmp_path / "bin")
    result = cdisk("ls", transport + name, env=podman.env)
    assert_one_line_error(result, 2, f"{name} (after {transport}) is no image name (name[:tag], name@digest or an ID); "
                                     "check it")
    assert podman.calls() == []


def test_a_device_as_image_is_said_to_be_a_device(tmp_path: Path) -> None:
    result = cdisk("ls", "/dev/null")
    assert_one_line_error(result, 2, "/dev/null is a character device, not an image; cdisk reads container images")
    assert "oci-archive:/dev/null" not in result.err


def _limited(*args: str | Path, kib: int) -> Run:
    """cdisk with `ulimit -v kib` (its address space): what it reads must fit."""
    argv = ["sh", "-c", f'ulimit -v {kib} && exec "$0" -m cdisk "$@"', sys.executable, *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("special", [b"x", b"L"])
def test_an_archive_claiming_a_huge_header_costs_no_memory(tmp_path: Path, special: bytes) -> None:
    # A PAX (or GNU long-name) header claiming 1 GiB, in a sparse file: once read whole ("unexpected MemoryError").
    evil = tmp_path / "evil.tar"
    with evil.open("wb") as file:
        file.write(tar_header(b"PaxHeaders/x" if special == b"x" else b"././@LongLink", special, 1 << 30))
        file.truncate(512 + (1 << 30) + 1024)
    result = _limited("ls", evil, kib=700_000)
    assert_one_line_error(result, 2, f"{evil} looks like a path, not an image name; did you mean oci-archive:{evil} "
                                     f"or docker-archive:{evil}?")
