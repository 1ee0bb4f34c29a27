"""Disk files written byte by byte the way an attacker would: each makes an unconfined qemu-img open or
wait on a host path, or print without end.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.images import sh

SECTOR = 512


def vmdk_header(capacity: int, desc_sector: int = 1, desc_sectors: int = 20, grain: int = 128) -> bytes:
    """A VMDK4 sparse header (`KDMV`), padded to one sector."""
    fields = struct.pack("<IIQQQQIQQQ", 1, 3, capacity, grain, desc_sector, desc_sectors, 512, 0, 0, 128)
    return (b"KDMV" + fields).ljust(SECTOR, b"\0")


def descriptor(extent: str, create_type: bytes = b'createType="monolithicFlat"', kind: bytes = b"FLAT",
               extra: bytes = b"") -> bytes:
    return (b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n" + create_type + b"\n" + extra +
            b'\n# Extent description\nRW 8 ' + kind + b' "' + extent.encode() + b'" 0\n')


def capacity_zero_vmdk(extent: str, create_type: bytes = b'createType="monolithicFlat"',
                       kind: bytes = b"FLAT") -> bytes:
    """qemu reads the embedded descriptor of a capacity-0 sparse vmdk as a descriptor *file*: its extent
    names any host file (block/vmdk.c vmdk_open_vmdk4).
    """
    text = descriptor(extent, create_type, kind)
    return (vmdk_header(0) + text.ljust(20 * SECTOR, b"\0")).ljust(64 * 1024, b"\0")


def vmdk_with_descriptor(text: bytes, capacity: int = 8, desc_sector: int = 1) -> bytes:
    """A sparse vmdk of non-zero capacity whose embedded descriptor is `text` (at `desc_sector`)."""
    head = vmdk_header(capacity, desc_sector=desc_sector).ljust(desc_sector * SECTOR, b"\0")
    return (head + text.ljust(20 * SECTOR, b"\0")).ljust(64 * 1024, b"\0")


def vpc_of_type(path: Path, disk_type: int) -> Path:
    """A dynamic VHD made by qemu-img, its footer (and the copy at its end) rewritten to `disk_type`."""
    sh("qemu-img", "create", "-q", "-f", "vpc", path, "4M")
    data = bytearray(path.read_bytes())
    for footer in (0, len(data) - SECTOR):
        if data[footer:footer + 8] == b"conectix":
            struct.pack_into(">I", data, footer + 60, disk_type)
            struct.pack_into(">I", data, footer + 64, 0)
            checksum = ~sum(data[footer:footer + SECTOR]) & 0xFFFFFFFF
            struct.pack_into(">I", data, footer + 64, checksum)
    path.write_bytes(bytes(data))
    return path


def check_flood_qcow2(path: Path, l2_tables: int = 140) -> Path:
    """A ~9 MiB qcow2 whose every L2 entry is misaligned: `qemu-img check` prints one error line for each,
    ~470 MB of stderr in all, while `qemu-img info` opens it happily.
    """
    sh("qemu-img", "create", "-q", "-f", "qcow2", path, "1T")
    data = bytearray(path.read_bytes())
    cluster = 1 << struct.unpack_from(">I", data, 20)[0]
    l1_size, l1_offset = struct.unpack_from(">IQ", data, 36)
    data += bytes(-len(data) % cluster)
    for index in range(min(l2_tables, l1_size)):
        struct.pack_into(">Q", data, l1_offset + 8 * index, len(data) | 1 << 63)
        data += struct.pack(">Q", 1 << 63 | 0x200) * (cluster // 8)
    path.write_bytes(bytes(data))
    return path
