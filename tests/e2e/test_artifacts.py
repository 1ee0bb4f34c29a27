"""Disk artifacts: manifests whose layer is the disk itself, not a tar — ORAS pushes of a raw or qcow2 file,
KubeVirt's VM export (raw+zstd), podman machine's disk artifacts (zstd, one manifest per disk type). Written
byte by byte as their tools write them and read on a host with neither engine; results checked with qemu-img
compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from backports import zstd

from tests.helpers import assert_one_line_error, cdisk, converted, same_disk
from tests.images import oci_artifact_layout, oci_layout, sh

pytestmark = pytest.mark.needs("qemu-img", "qemu-io", "bwrap")

TITLE = "org.opencontainers.image.title"
KUBEVIRT = {"mediaType": "application/vnd.kubevirt.disk.raw+zstd"}


@pytest.fixture(autouse=True)
def on_a_host_without_engines(no_engines: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of these tests runs on a host with neither podman nor docker."""
    monkeypatch.setenv("PATH", no_engines["PATH"])


def disk(path: Path, fmt: str, pattern: int, size: str = "6M") -> Path:
    """A disk with data at a few places and holes elsewhere."""
    sh("qemu-img", "create", "-q", "-f", fmt, path, size)
    for offset, length in (("0", "64k"), ("1M", "4k"), ("3M", "128k")):
        sh("qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path)
    return path


def test_an_oras_push_of_a_qcow2_file_is_read_in_place(tmp_path: Path) -> None:
    qcow2 = disk(tmp_path / "vm.qcow2", "qcow2", 0x21)
    layout = oci_artifact_layout(tmp_path, [([(qcow2.read_bytes(), {"annotations": {TITLE: "vm.qcow2"}})], {})])
    said = converted(f"oci:{layout}", tmp_path / "out.raw")
    assert same_disk(qcow2, "qcow2", tmp_path / "out.raw", "raw")
    assert "decompressing" not in said.err and json.loads(said.out)["disk"] == "/disk/vm.qcow2"


def test_an_oras_push_of_a_raw_file(tmp_path: Path) -> None:
    raw = disk(tmp_path / "vm.raw", "raw", 0x22)
    layout = oci_artifact_layout(tmp_path, [([(raw.read_bytes(), {"annotations": {TITLE: "vm.raw"}})], {})])
    converted(f"oci:{layout}", tmp_path / "out.qcow2", "-O", "qcow2")
    assert same_disk(raw, "raw", tmp_path / "out.qcow2", "qcow2")


def test_a_raw_disk_that_starts_with_zeros_is_a_disk_not_an_empty_tar(tmp_path: Path) -> None:
    raw = tmp_path / "zeros.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", raw, "2M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x7 1M 4k", raw)
    layout = oci_artifact_layout(tmp_path, [([(raw.read_bytes(), {})], {})])
    converted(f"oci:{layout}", tmp_path / "out.raw")
    assert same_disk(raw, "raw", tmp_path / "out.raw", "raw")


def test_a_kubevirt_export_raw_zstd_is_decompressed_into_the_target(tmp_path: Path) -> None:
    raw = disk(tmp_path / "rootdisk.raw", "raw", 0x23, "16M")
    layer = zstd.compress(raw.read_bytes())
    layout = oci_artifact_layout(tmp_path, [([(layer, {**KUBEVIRT, "annotations": {
        "io.kubevirt.disk.name": "rootdisk"}})], {})])
    said = converted(f"oci:{layout}", tmp_path / "out.raw")
    assert same_disk(raw, "raw", tmp_path / "out.raw", "raw")
    assert "named, not converted" in said.err and json.loads(said.out)["disk"] == "/disk/rootdisk"
    st = (tmp_path / "out.raw").stat()
    assert st.st_size == 16 << 20 and st.st_blocks * 512 < 1 << 20  # holes where the disk has none
    assert sorted(p.name for p in tmp_path.iterdir()) == [layout.name, "out.raw", "rootdisk.raw"]


def _podman_machine(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], Path]]:
    """An index of podman machine disk artifacts: qemu (qcow2) and applehv (raw) for amd64 and arm64."""
    disks: dict[tuple[str, str], Path] = {}
    manifests = []
    for pattern, (arch, disktype, fmt) in enumerate([("amd64", "qemu", "qcow2"), ("amd64", "applehv", "raw"),
                                                     ("arm64", "qemu", "qcow2"), ("arm64", "applehv", "raw")]):
        path = disks[arch, disktype] = disk(tmp_path / f"{arch}-{disktype}.{fmt}", fmt, 0x30 + pattern)
        title = f"podman-machine.{arch}.{disktype}.{fmt}.zst"
        manifests.append(([(zstd.compress(path.read_bytes()), {"mediaType": "application/zstd",
                                                                "annotations": {TITLE: title}})],
                          {"platform": {"os": "linux", "architecture": arch}, "annotations": {"disktype": disktype}}))
    return oci_artifact_layout(tmp_path, manifests), disks


@pytest.mark.parametrize(("switches", "chosen", "fmt"), [
    ([], ("amd64", "qemu"), "qcow2"),
    (["--disktype", "applehv"], ("amd64", "applehv"), "raw"),
    (["--platform", "linux/aarch64"], ("arm64", "qemu"), "qcow2"),
], ids=["default-qemu", "applehv", "arm64"])
def test_podman_machine_disks_are_chosen_by_disktype_and_platform(tmp_path: Path, switches: list[str],
                                                                    chosen: tuple[str, str], fmt: str) -> None:
    if sh("uname", "-m").stdout.strip() != "x86_64":
        pytest.skip("the default platform of this test is amd64")
    layout, disks = _podman_machine(tmp_path)
    converted(f"oci:{layout}", tmp_path / "out.raw", *switches)
    assert same_disk(disks[chosen], fmt, tmp_path / "out.raw", "raw")
    assert not same_disk(disks["arm64" if chosen[0] == "amd64" else "amd64", chosen[1]], fmt,
                         tmp_path / "out.raw", "raw")


def test_a_disktype_there_is_not_is_one_line_naming_those_there_are(tmp_path: Path) -> None:
    layout, _ = _podman_machine(tmp_path)
    result = cdisk("convert", "-q", "--disktype", "hyperv", "--platform", "linux/amd64", f"oci:{layout}",
                   tmp_path / "out.raw")
    assert_one_line_error(result, 3)
    assert "'applehv', 'qemu'" in result.err and "--disktype" in result.err
    assert not (tmp_path / "out.raw").exists()


def test_several_disks_are_chosen_by_path_and_listed(tmp_path: Path) -> None:
    qcow2, raw = disk(tmp_path / "a.qcow2", "qcow2", 0x41), disk(tmp_path / "b.raw", "raw", 0x42)
    layout = oci_artifact_layout(tmp_path, [([(qcow2.read_bytes(), {"annotations": {TITLE: "a.qcow2"}}),
                                              (zstd.compress(raw.read_bytes()), {"annotations": {TITLE: "b.raw"}})],
                                             {})])
    result = cdisk("convert", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 4 and "/disk/a.qcow2, /disk/b.raw" in result.err and "--path" in result.err
    converted(f"oci:{layout}", tmp_path / "out.raw", "--path", "/disk/b.raw")
    assert same_disk(raw, "raw", tmp_path / "out.raw", "raw")
    listing = json.loads(cdisk("ls", "--json", f"oci:{layout}").out)
    assert [(d["path"], d["format"]) for d in listing["disks"]] == [("/disk/a.qcow2", "qcow2"),
                                                                    ("/disk/b.raw", "raw")]
    assert [d["file_size"] for d in listing["disks"]] == [qcow2.stat().st_size, raw.stat().st_size]


def test_untitled_or_clashing_layers_are_named_by_their_place(tmp_path: Path) -> None:
    a, b = disk(tmp_path / "a.qcow2", "qcow2", 0x51), disk(tmp_path / "b.qcow2", "qcow2", 0x52)
    layout = oci_artifact_layout(tmp_path, [([(a.read_bytes(), {"annotations": {TITLE: "../.hidden"}}),
                                              (b.read_bytes(), {"annotations": {TITLE: "x/disk.qcow2"}}),
                                              (a.read_bytes() + b"\0" * 512, {"annotations": {TITLE: "disk.qcow2"}})],
                                             {})])
    listing = json.loads(cdisk("ls", "--json", f"oci:{layout}").out)
    assert [d["path"] for d in listing["disks"]] == ["/disk/disk.qcow2", "/disk/layer-0", "/disk/layer-2"]


def test_refresh_of_an_artifact_tells_two_artifacts_apart(tmp_path: Path) -> None:
    first, second = disk(tmp_path / "a.qcow2", "qcow2", 0x61), disk(tmp_path / "b.qcow2", "qcow2", 0x62)
    target = tmp_path / "vm.raw"

    def refresh(layout: Path) -> str:
        result = cdisk("refresh", "--json", f"oci:{layout}", target)
        assert result.code == 0, result.err
        return str(json.loads(result.out.splitlines()[-1])["action"])

    one = oci_artifact_layout(tmp_path, [([(first.read_bytes(), {})], {})])
    two = oci_artifact_layout(tmp_path, [([(second.read_bytes(), {})], {})])
    assert refresh(one) == "updated" and refresh(one) == "unchanged"
    two.rename(tmp_path / "moved")
    one.rename(two)  # the same reference now names another artifact with the very same (empty) config
    (tmp_path / "moved").rename(one)
    assert refresh(one) == "updated" and same_disk(second, "qcow2", target, "raw")


def test_an_artifact_layer_that_is_a_tar_is_read_as_one(tmp_path: Path) -> None:
    # `oras push dir/` packs a directory as a tar(+gzip): the bytes decide, not the manifest.
    import gzip

    from tests.images import Entry, layer_tar

    qcow2 = disk(tmp_path / "vm.qcow2", "qcow2", 0x71)
    layer = gzip.compress(layer_tar([Entry("disk/vm.qcow2", data=qcow2.read_bytes())]))
    layout = oci_artifact_layout(tmp_path, [([(layer, {"annotations": {TITLE: "dir"}})], {})])
    converted(f"oci:{layout}", tmp_path / "out.raw")
    assert same_disk(qcow2, "qcow2", tmp_path / "out.raw", "raw")


def test_an_image_layer_that_is_no_tar_is_still_refused(tmp_path: Path) -> None:
    # Only an artifact (a config with no rootfs) may have a disk for a layer; an image's layer is a tar.
    qcow2 = disk(tmp_path / "vm.qcow2", "qcow2", 0x72)
    layout, _ = oci_layout(tmp_path, [qcow2.read_bytes()])
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert_one_line_error(result, 5, "not a tar header")


def test_refresh_keeps_the_disktype_it_was_given(tmp_path: Path) -> None:
    layout, disks = _podman_machine(tmp_path)
    target = tmp_path / "machine.raw"

    def refresh(*switches: str) -> str:
        result = cdisk("refresh", "--json", "--platform", "linux/amd64", *switches, f"oci:{layout}", target)
        assert result.code == 0, result.err
        return str(json.loads(result.out.splitlines()[-1])["action"])

    assert refresh("--disktype", "applehv") == "updated" and same_disk(disks["amd64", "applehv"], "raw", target, "raw")
    assert refresh() == "unchanged"  # not qemu's: the record's type is kept
    assert json.loads((tmp_path / "machine.raw.cdisk.json").read_text())["disktype"] == "applehv"
    assert refresh("--disktype", "qemu") == "updated" and same_disk(disks["amd64", "qemu"], "qcow2", target, "raw")


def test_an_explicit_disktype_must_be_the_one_there_is(tmp_path: Path) -> None:
    raw = disk(tmp_path / "vm.raw", "raw", 0x24)
    layout = oci_artifact_layout(tmp_path, [
        ([(zstd.compress(raw.read_bytes()), {"annotations": {TITLE: "vm.raw"}})],
         {"platform": {"os": "linux", "architecture": "amd64"}, "annotations": {"disktype": "applehv"}}),
        ([(zstd.compress(raw.read_bytes()), {"annotations": {TITLE: "vm.raw"}})],
         {"platform": {"os": "linux", "architecture": "arm64"}, "annotations": {"disktype": "applehv"}})])
    converted(f"oci:{layout}", tmp_path / "out.raw", "--platform", "linux/amd64")  # the only one: taken
    result = cdisk("convert", "-q", "--platform", "linux/amd64", "--disktype", "qemu", f"oci:{layout}",
                   tmp_path / "other.raw")
    assert_one_line_error(result, 3, "'applehv'")


def test_more_compressed_disks_than_copies_are_listed_and_the_last_converts(tmp_path: Path) -> None:
    disks = [disk(tmp_path / f"d{n}.raw", "raw", 0x80 + n, "4M") for n in range(10)]
    layout = oci_artifact_layout(tmp_path, [([(zstd.compress(d.read_bytes()), {"annotations": {TITLE: d.name}})
                                              for d in disks], {})])
    listing = json.loads(cdisk("ls", "--json", f"oci:{layout}").out)
    assert [d["judged_by"] for d in listing["disks"]] == ["header"] * 8 + ["none"] * 2
    assert [d["file_size"] for d in listing["disks"]] == [4 << 20] * 10  # its size, though not kept
    converted(f"oci:{layout}", tmp_path / "out.raw", "--path", "/disk/d9.raw")
    assert same_disk(disks[9], "raw", tmp_path / "out.raw", "raw")
