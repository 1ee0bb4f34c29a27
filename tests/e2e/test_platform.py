"""--platform: one image of a multi-platform image, pulled by either engine from the suite's registry, or taken
from an index in a file; kept by refresh."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Images, assert_one_line_error, cdisk, refused_by_podman, same_disk
from tests.images import sh, unique_name

pytestmark = [pytest.mark.needs("podman", "docker-registry", "qemu-img", "qemu-io", "bwrap"),
              pytest.mark.skipif(os.uname().machine != "x86_64", reason="builds an arm64 image beside the host's")]


def _arm64_image(images: Images, disk: Path) -> str:
    context = images.workdir / f"arm-{uuid.uuid4().hex[:8]}"
    context.mkdir()
    (context / "disk.qcow2").write_bytes(disk.read_bytes())
    (context / "Containerfile").write_text("FROM scratch\nCOPY disk.qcow2 /disk/\n")
    name = unique_name()
    sh("podman", "build", "-q", "--layers=false", "--platform", "linux/arm64", "-t", name, context)
    images.names.append(name)
    return name


@pytest.fixture
def multi(images: Images, registry: str) -> Iterator[tuple[str, Path, Path]]:
    """A two-platform image (amd64, arm64) in the suite's registry: its reference and both disks."""
    amd, arm = images.disk("amd.qcow2", pattern=0x61), images.disk("arm.qcow2", pattern=0x62)
    listed = unique_name()
    sh("podman", "manifest", "create", listed)
    try:
        for name in (images.build({"disk.qcow2": amd}), _arm64_image(images, arm)):
            sh("podman", "manifest", "add", listed, f"containers-storage:{name}")
        reference = f"{registry}/cdisk/multi-{uuid.uuid4().hex[:8]}:1"
        sh("podman", "manifest", "push", "-q", "--all", "--tls-verify=false", listed, f"docker://{reference}")
    finally:
        sh("podman", "manifest", "rm", listed, check=False)
    yield reference, amd, arm
    sh("podman", "rmi", "-f", reference, check=False)


def test_podman_pulls_the_platform_asked_for_and_refresh_keeps_it(multi: tuple[str, Path, Path],
                                                                  tmp_path: Path) -> None:
    reference, amd, arm = multi
    target = tmp_path / "vm.raw"
    tls = ("--tls-verify", "false", "--engine", "podman")
    result = cdisk("refresh", "--json", *tls, "--platform", "linux/aarch64", reference, target)
    assert result.code == 0, result.err
    assert same_disk(arm, "qcow2", target, "raw")
    assert json.loads((tmp_path / "vm.raw.cdisk.json").read_text())["platform"] == "linux/arm64"
    again = cdisk("refresh", "--json", *tls, reference, target)  # no --platform: the recorded one
    assert json.loads(again.out.splitlines()[-1])["action"] == "unchanged", again.err
    # The store now holds the arm64 image under that name: asking for amd64 pulls that one.
    result = cdisk("convert", "--json", *tls, "--platform", "linux/amd64", reference, tmp_path / "amd.raw")
    assert result.code == 0, result.err
    assert same_disk(amd, "qcow2", tmp_path / "amd.raw", "raw")
    never = cdisk("convert", "-q", *tls, "--pull", "never", "--platform", "linux/arm64", reference, tmp_path / "n.raw")
    assert_one_line_error(never, 3, f"{reference} is linux/amd64, --platform asks linux/arm64; pull that platform "
                                    f"(`podman pull --platform linux/arm64 {reference}`) or drop --platform")
    bad = cdisk("convert", "-q", "--platform", "arm64", reference, tmp_path / "b.raw")
    assert bad.code == 2 and "OS/ARCH" in bad.err


@pytest.mark.needs("docker", "dockerd")
def test_docker_pulls_the_platform_asked_for(multi: tuple[str, Path, Path], docker_host: str,
                                            tmp_path: Path) -> None:
    reference, _, arm = multi
    try:
        result = cdisk("convert", "--json", "--engine", "docker", "--method", "save", "--platform", "linux/arm64",
                       reference, tmp_path / "arm.raw")
        assert result.code == 0, result.err
        assert same_disk(arm, "qcow2", tmp_path / "arm.raw", "raw")
    finally:
        sh("docker", "rmi", "-f", reference, check=False)


def test_a_local_image_of_another_platform_is_told_with_both(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    never = cdisk("convert", "--pull", "never", "--platform", "linux/arm64", name, tmp_path / "out.raw")
    assert_one_line_error(never, 3, f"{name} is linux/amd64, --platform asks linux/arm64; pull that platform (`podman "
                                    f"pull --platform linux/arm64 {name}`) or drop --platform")
    # As podman does, --pull missing pulls the platform asked; a registry that does not answer is told as such.
    unanswered = f"127.0.0.1:1/cdisk/{uuid.uuid4().hex[:8]}:1"
    sh("podman", "tag", name, unanswered)
    images.names.append(unanswered)
    missing = cdisk("convert", "--engine", "podman", "--platform", "linux/arm64", unanswered, tmp_path / "out.raw")
    assert_one_line_error(missing, 3, f"{unanswered} in podman's store is linux/amd64, --platform asks linux/arm64, "
                                      f"and pulling that platform failed: {refused_by_podman('127.0.0.1:1')}; check "
                                      "the name and --platform, or drop --platform to use the local image")
    assert list(tmp_path.iterdir()) == []


def test_a_variant_the_architecture_lacks_is_a_usage_error(tmp_path: Path) -> None:
    result = cdisk("convert", "--platform", "linux/amd64/v9", "localhost/vm:1", tmp_path / "out.raw")
    assert_one_line_error(result, 2, "--platform 'linux/amd64/v9': amd64 has no variant v9 (it has v1, v2, v3, v4); "
                                     "name one of those, or leave the variant out (linux/amd64)")
