"""Hostile or unreadable disks are refused with a clear line, exit 5, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Convert, Images
from tests.images import sh


@pytest.mark.parametrize(
    "backing", ["/etc/hostname", "../../etc/hostname", "http://127.0.0.1:1/x.img"], ids=["absolute", "relative", "url"]
)
def test_backing_file_is_refused(convert: Convert, images: Images, tmp_path: Path, backing: str) -> None:
    disk = tmp_path / "evil.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", disk, "8M")
    result = convert("-q", images.build({"evil.qcow2": disk}), tmp_path / "out.raw")
    assert result.code == 5
    assert "backing file" in result.err and backing in result.err
    assert not (tmp_path / "out.raw").exists()


def test_external_data_file_is_refused(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = tmp_path / "evil.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", disk, "8M")
    result = convert("-q", images.build({"evil.qcow2": disk}), tmp_path / "out.raw")
    assert result.code == 5 and "external data file" in result.err


def test_vmdk_descriptor_is_refused(convert: Convert, images: Images, tmp_path: Path) -> None:
    descriptor = tmp_path / "evil.vmdk"
    descriptor.write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "/etc/hostname" 0\n'
    )
    result = convert("-q", images.build({"evil.vmdk": descriptor}), tmp_path / "out.raw")
    assert result.code == 5 and "vmdk descriptor" in result.err


def test_corrupted_qcow2_is_refused(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    data = bytearray(disk.read_bytes())
    data[24:32] = (1 << 62).to_bytes(8, "big")  # a virtual size qemu cannot address
    disk.write_bytes(bytes(data))
    result = convert("-q", images.build({"disk.qcow2": disk}), tmp_path / "out.raw")
    assert result.code == 5 and "qemu-img cannot read the disk" in result.err
