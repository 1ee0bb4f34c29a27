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


def _check_vmdk(header: bytes, read_at: ReadAt) -> None:
    desc_sector, desc_sectors = struct.unpack_from("<QQ", header, 28)
    descriptor = read_at(desc_sector * 512, min(desc_sectors * 512, 1 << 20)) if desc_sector else b""
    text = descriptor.split(b"\0", 1)[0].decode("ascii", "replace")
    if "parentFileNameHint" in text or re.search(r"parentCID\s*=\s*(?!ffffffff)", text):
        raise _refuse("is a vmdk with a parent (backing) file")
    create_type = re.search(r'createType\s*=\s*"([^"]*)"', text)
    if create_type and create_type.group(1) not in ("monolithicSparse", "streamOptimized"):
        raise _refuse(f"is a vmdk of type {create_type.group(1)!r}, whose extents are other files")


def detect_format(read_at: ReadAt) -> str:
    """The qemu driver name for the disk: qcow2, vmdk, vdi, vhdx, vpc, or raw.

    Raises:
        UnsafeImageError: the disk names other files, is encrypted, or is of a format cdisk refuses.
    """
    header = read_at(0, HEADER_BYTES)
    if header.startswith(QCOW2_MAGIC):
        _check_qcow2(header)
        return "qcow2"
    if header.startswith(VMDK_SPARSE_MAGIC) and len(header) >= 44:
        _check_vmdk(header, read_at)
        return "vmdk"
    if header.startswith(b"# Disk DescriptorFile"):
        raise _refuse("is a vmdk descriptor, whose extents are other files")
    if len(header) >= 68 and struct.unpack_from("<I", header, 64)[0] == VDI_SIGNATURE:
        return "vdi"
    if header.startswith(b"vhdxfile"):
        return "vhdx"
    if header.startswith(b"conectix"):
        return "vpc"
    if header.startswith(b"QED\0"):
        raise UnsafeImageError(f"the disk is a QED image, which qemu deprecates and cdisk does not read; "
                               f"{REFUSE_HINT}")
    if header.startswith(b"LUKS\xba\xbe"):
        raise UnsafeImageError("the disk is LUKS-encrypted; cdisk cannot convert it without its key: "
                               "ship an unencrypted disk")
    return "raw"
