"""Telling a disk's format from its bytes, and refusing what names other files: on real headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdisk.core.disk.formats import detect_format
from cdisk.core.errors import UnsafeImageError
from tests import hostile
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
    ],
)
def test_qcow2_refusals(tmp_path: Path, options: list[str], says: str) -> None:
    disk = tmp_path / "d.qcow2"
    options = [o.replace("DATA", str(tmp_path / "data.raw")) for o in options]
    sh("qemu-img", "create", "-q", "-f", "qcow2", *options, disk, "4M")
    with pytest.raises(UnsafeImageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        detect_format(reader(disk))


@pytest.mark.parametrize("method", [1, 2])  # AES, LUKS
def test_encrypted_qcow2_is_refused(tmp_path: Path, method: int) -> None:
    # Written, not made by `qemu-img create -o encrypt.format=luks`: its PBKDF benchmark fails at random on a
    # fast or busy machine ("Unable to get accurate CPU usage"). The header field is all that is judged.
    disk = tmp_path / "d.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "4M")
    data = bytearray(disk.read_bytes())
    data[32:36] = method.to_bytes(4, "big")
    disk.write_bytes(bytes(data))
    with pytest.raises(UnsafeImageError, match="encrypted qcow2"):
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


# qemu's vmdk driver reads more than the header says: a descriptor *file* when capacity is 0, createType by
# `strstr` plus two skipped bytes, a parent hint at the fixed offset 0x200. Each variant must be refused.
@pytest.mark.parametrize(
    ("create_type", "kind"),
    [
        (b'createType="monolithicFlat"', b"FLAT"),
        (b'createType:"monolithicFlat"', b"FLAT"),
        (b'createType  "twoGbMaxExtentFlat"', b"FLAT"),
        (b'createType="vmfs"', b"VMFS"),
        (b'createType="monolithicSparse"', b"SPARSE"),
        (b"", b"FLAT"),
    ],
)
def test_vmdk_of_capacity_zero_is_refused(create_type: bytes, kind: bytes) -> None:
    data = hostile.capacity_zero_vmdk("/etc/shadow", create_type, kind)
    with pytest.raises(UnsafeImageError, match="capacity 0"):
        detect_format(lambda offset, length: data[offset : offset + length])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (hostile.descriptor("/etc/shadow", b'createType:"monolithicFlat"', b"SPARSE"), "of type 'monolithicFlat'"),
        (hostile.descriptor("x.vmdk", b'ddb.createType="vmfs"', b"SPARSE"), "of type 'vmfs'"),
        (hostile.descriptor("/etc/shadow", b'createType="monolithicSparse"'), "extents besides the file"),
        (hostile.descriptor("x.vmdk", b'createType="monolithicSparse"', b"SPARSE", b'RW 8 SPARSE "y.vmdk"\n'),
         "extents besides the file"),
        (hostile.descriptor("x.vmdk", b'createType="streamOptimized"', b"SPARSE", b'parentFileNameHint="/a"\n'),
         "parent"),
    ],
)
def test_vmdk_descriptor_read_as_qemu_reads_it(text: bytes, says: str) -> None:
    data = hostile.vmdk_with_descriptor(text)
    with pytest.raises(UnsafeImageError, match=says):
        detect_format(lambda offset, length: data[offset : offset + length])


def test_vmdk_parent_hint_where_qemu_looks_not_where_the_header_points() -> None:
    clean = hostile.descriptor("x.vmdk", b'createType="monolithicSparse"', b"SPARSE")
    data = bytearray(hostile.vmdk_with_descriptor(clean, desc_sector=40))
    hint = b'parentFileNameHint="/etc/shadow"\n'
    data[0x200 : 0x200 + len(hint)] = hint
    with pytest.raises(UnsafeImageError, match="parent"):
        detect_format(lambda offset, length: bytes(data[offset : offset + length]))
    assert detect_format(lambda o, n: hostile.vmdk_with_descriptor(clean)[o : o + n]) == "vmdk"


@pytest.mark.parametrize(("disk_type", "says"), [(4, "differencing"), (0, "unknown type 0"), (5, "unknown type 5"),
                                                 (6, "unknown type 6")])
def test_vpc_other_than_fixed_or_dynamic_is_refused(tmp_path: Path, disk_type: int, says: str) -> None:
    disk = hostile.vpc_of_type(tmp_path / "d.vhd", disk_type)
    with pytest.raises(UnsafeImageError, match=says):
        detect_format(reader(disk))


@pytest.mark.parametrize("disk_type", [2, 3])
def test_vpc_fixed_and_dynamic_pass(tmp_path: Path, disk_type: int) -> None:
    assert detect_format(reader(hostile.vpc_of_type(tmp_path / "d.vhd", disk_type))) == "vpc"
