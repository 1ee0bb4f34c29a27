"""Telling a disk's format from its bytes, and refusing what names other files: on real headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdisk.core.errors import UnsafeImageError
from cdisk.core.formats import detect_format
from tests.images import sh


def reader(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return lambda offset, length: data[offset : offset + length]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("qcow2", []),
        ("qcow2", ["-o", "compat=0.10"]),
        ("raw", []),
        ("vmdk", []),
        ("vmdk", ["-o", "subformat=streamOptimized"]),
        ("vdi", []),
        ("vhdx", []),
        ("vpc", []),
    ],
)
def test_formats_qemu_img_creates(tmp_path: Path, fmt: str, options: list[str]) -> None:
    disk = tmp_path / f"d.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, *options, disk, "4M")
    assert detect_format(reader(disk)) == fmt


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["-u", "-b", "/etc/hostname", "-F", "raw"], "backing file ('/etc/hostname')"),
        (["-u", "-b", "nbd+unix:///x?socket=/run/s", "-F", "raw", "-o", "compat=0.10"], "backing file"),
        (["-o", "data_file=DATA"], "external data file"),
        (["--object", "secret,id=s0,data=pw", "-o", "encrypt.format=luks,encrypt.key-secret=s0"], "encrypted qcow2"),
    ],
)
def test_qcow2_refusals(tmp_path: Path, options: list[str], says: str) -> None:
    disk = tmp_path / "d.qcow2"
    options = [o.replace("DATA", str(tmp_path / "data.raw")) for o in options]
    sh("qemu-img", "create", "-q", "-f", "qcow2", *options, disk, "4M")
    with pytest.raises(UnsafeImageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        detect_format(reader(disk))


def test_vmdk_with_parent_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.vmdk"
    sh("qemu-img", "create", "-q", "-f", "vmdk", base, "4M")
    child = tmp_path / "child.vmdk"
    sh("qemu-img", "create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", child)
    with pytest.raises(UnsafeImageError, match="vmdk with a parent"):
        detect_format(reader(child))


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"# Disk DescriptorFile\n", "vmdk descriptor"),
        (b"QED\0" + bytes(60), "QED image"),
        (b"LUKS\xba\xbe" + bytes(58), "LUKS-encrypted"),
    ],
)
def test_other_refusals(head: bytes, says: str) -> None:
    with pytest.raises(UnsafeImageError, match=says):
        detect_format(lambda offset, length: head[offset : offset + length])


def test_a_short_raw_disk() -> None:
    assert detect_format(lambda offset, length: b"\0" * 3) == "raw"
