"""The disk's format, told from its own bytes so that qemu-img never has to probe.

Every format is also judged for what it could make qemu-img open besides the disk itself: a
backing file, an external data file, extents in other files. Such images are refused.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from cdisk.core.errors import UnsafeImageError

ReadAt = Callable[[int, int], bytes]
"""read_at(offset, length) -> up to `length` bytes of the disk from `offset`."""

HEADER_BYTES = 64 * 1024
QCOW2_MAGIC = b"QFI\xfb"
# ISO 9660's volume descriptors: a type byte, then this magic, from sector 16 of 2048 bytes (the first is always
# there; file(1) looks at the first three).
ISO9660_MAGIC = b"CD001"
ISO9660_MAGIC_AT = (0x8001, 0x8801, 0x9001)
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
VMDK_SPARSE_MAGIC = b"KDMV"
VDI_SIGNATURE = 0xBEDA107F
REFUSE_HINT = "rebuild the image with a self-contained disk (e.g. `qemu-img convert -O qcow2`)"


def _refuse(what: str) -> UnsafeImageError:
    return UnsafeImageError(f"the disk {what}; cdisk refuses it because qemu-img would open files "
                            f"outside the image; {REFUSE_HINT}")


def _check_qcow2(header: bytes) -> None:
    if len(header) < 72:
        raise UnsafeImageError("the disk has a truncated qcow2 header; rebuild the image")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", header, 4)
    crypt_method = struct.unpack_from(">I", header, 32)[0]
    if backing_offset and backing_size:
        name = header[backing_offset:backing_offset + backing_size].decode("utf-8", "replace")
        raise _refuse(f"is a qcow2 with a backing file ({name!r})")
    if crypt_method:
        raise UnsafeImageError("the disk is an encrypted qcow2; cdisk cannot convert it without its key: "
                               "ship an unencrypted disk")
    if version < 3:
        return
    incompatible = struct.unpack_from(">Q", header, 72)[0]
    if incompatible & QCOW2_INCOMPAT_DATA_FILE:
        raise _refuse("is a qcow2 with an external data file")
    ext_offset = struct.unpack_from(">I", header, 100)[0] if len(header) >= 104 else 104
    while ext_offset + 8 <= len(header):
        ext_type, ext_len = struct.unpack_from(">II", header, ext_offset)
        if ext_type == 0:
            break
        if ext_type == QCOW2_EXT_DATA_FILE:
            raise _refuse("is a qcow2 that names an external data file")
        ext_offset += 8 + (ext_len + 7) // 8 * 8


# qemu's block/vmdk.c reads a descriptor as a C string of at most 1 MiB - 1 counted from the file's start
# (vmdk_read_desc), and looks for a parent at the fixed offset 0x200 in 10 KiB (vmdk_parent_open),
# whatever the header says: both regions are judged the way qemu reads them.
_VMDK_DESC_LIMIT = (1 << 20) - 1
_VMDK_PARENT_DESC = (0x200, 20 * 512)
# The createTypes for which qemu reads a descriptor's extents as other files (vmdk_open_desc_file).
_VMDK_SPARSE_TYPES = ("monolithicSparse", "streamOptimized")
_VMDK_EXTENT = re.compile(rb"^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\S+)", re.MULTILINE)


def _c_string(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


def _qemu_description(text: bytes, name: bytes) -> bytes | None:
    """The value qemu's vmdk_parse_description finds: after the first `name` anywhere, skip two bytes
    (meant to be `="`, but any two count), up to the next quote.
    """
    at = text.find(name)
    if at < 0:
        return None
    start = at + len(name) + 2
    end = text.find(b'"', start)
    return None if start >= len(text) or end < 0 else text[start:end]


def _check_vmdk_descriptor(text: bytes) -> None:
    if b"parentFileNameHint" in text or re.search(rb"parentCID\s*=\s*(?!ffffffff)", text):
        raise _refuse("is a vmdk with a parent (backing) file")
    create_type = _qemu_description(text, b"createType")
    if create_type is not None and create_type.decode("ascii", "replace") not in _VMDK_SPARSE_TYPES:
        raise _refuse(f"is a vmdk of type {create_type.decode('ascii', 'replace')!r}, whose extents are other files")
    extents = _VMDK_EXTENT.findall(text)
    if len(extents) > 1 or any(kind != b"SPARSE" for _, kind in extents):
        raise _refuse("is a vmdk whose descriptor names extents besides the file itself")


def _check_vmdk(header: bytes, read_at: ReadAt) -> None:
    capacity, _, desc_sector = struct.unpack_from("<QQQ", header, 12)
    if capacity == 0:
        # qemu then reads the embedded descriptor as a descriptor *file*, whose extents name host files.
        raise _refuse("is a vmdk with capacity 0, which qemu reads as a descriptor of other files")
    regions = [_VMDK_PARENT_DESC]
    if 0 < desc_sector * 512 < _VMDK_DESC_LIMIT:
        regions.append((desc_sector * 512, _VMDK_DESC_LIMIT - desc_sector * 512))
    for offset, length in regions:
        _check_vmdk_descriptor(_c_string(read_at(offset, length)))


# VHD footer (at offset 0 of a dynamic disk): disk type at 60; 2 fixed, 3 dynamic, 4 differencing.
_VPC_DISK_TYPE_OFFSET = 60
_VPC_TYPES = {2: "fixed", 3: "dynamic"}


def _check_vpc(header: bytes) -> None:
    if len(header) < _VPC_DISK_TYPE_OFFSET + 4:
        raise UnsafeImageError("the disk has a truncated VHD footer; rebuild the image")
    disk_type = struct.unpack_from(">I", header, _VPC_DISK_TYPE_OFFSET)[0]
    if disk_type == 4:
        raise _refuse("is a VHD differencing disk, whose data is partly in its parent")
    if disk_type not in _VPC_TYPES:
        raise UnsafeImageError(f"the disk is a VHD of unknown type {disk_type}; {REFUSE_HINT}")


def detect_format(read_at: ReadAt) -> str:
    """The qemu driver name for the disk: qcow2, vmdk, vdi, vhdx, vpc, or raw.

    Raises:
        UnsafeImageError: the disk names other files, is encrypted, or is of a format cdisk refuses.
    """
    header = read_at(0, HEADER_BYTES)
    if header.startswith(QCOW2_MAGIC):
        _check_qcow2(header)
        return "qcow2"
    if header.startswith(VMDK_SPARSE_MAGIC) and len(header) >= 36:
        _check_vmdk(header, read_at)
        return "vmdk"
    if header.startswith(b"# Disk DescriptorFile"):
        raise _refuse("is a vmdk descriptor, whose extents are other files")
    if len(header) >= 68 and struct.unpack_from("<I", header, 64)[0] == VDI_SIGNATURE:
        return "vdi"
    if header.startswith(b"vhdxfile"):
        return "vhdx"
    if header.startswith(b"conectix"):
        _check_vpc(header)
        return "vpc"
    if header.startswith(b"QED\0"):
        raise UnsafeImageError(f"the disk is a QED image, which qemu deprecates and cdisk does not read; "
                               f"{REFUSE_HINT}")
    if header.startswith(b"LUKS\xba\xbe"):
        raise UnsafeImageError("the disk is LUKS-encrypted; cdisk cannot convert it without its key: "
                               "ship an unencrypted disk")
    return "raw"
