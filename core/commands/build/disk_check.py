"""Whether DISK is plainly not a disk: told from its first bytes and its size, before any work is done.

`detect_format()` (core/disk/formats.py) calls everything without a disk format's header "raw": a `.qcow2.xz`, a
tar, a text file would all be built as raw disks that no VM can boot. This module names what such a file is
by its magic, the way file(1) and the decompressors themselves tell it, and refuses it with what to do instead:

- compressed: xz, gzip, zstd (also a skippable frame first), bzip2, lz4 (frame and legacy), lzip;
- archives: tar (POSIX and GNU, "ustar" at 257), zip (also empty or spanned), 7z;
- text: lines (at least one line feed) of UTF-8 printable characters and whitespace only, no NUL: a disk's
  first sectors are never that (a run of one printable byte with no line feed, as a test pattern writes, is not
  text);
- an empty file, and a raw disk whose size is not a whole number of 512-byte sectors (qemu would read a
  partial last sector as if zeros followed it).

`--raw` says DISK is a raw disk whatever its first bytes look like: it lifts the refusals by content, not the
empty file nor the 512 rule (a raw disk is whole sectors), and it cannot make a disk format's header raw
(convert would read the image's disk by that header again).

An ISO 9660 image ("CD001" in a volume descriptor from sector 16) is a raw image VMs boot as a CD-ROM, and
KubeVirt serves a containerDisk's ISO to a `cdrom` disk as it is (virtio-win's container disk is one): it is
built as raw, and named so that the summary can say to attach it as a cdrom.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cdisk.core.disk.formats import ISO9660_MAGIC, ISO9660_MAGIC_AT
from cdisk.core.errors import UsageError

SECTOR = 512
# The bytes read: up to the third ISO 9660 volume descriptor (sector 18 of 2048 bytes), where the last magic
# looked for ends; text is judged on as much.
HEAD_BYTES = 0x9000 + 2048
RAW_HINT = "or pass --raw if it really is a raw disk"


@dataclass(frozen=True)
class Content:
    """What DISK's first bytes say it is, past "raw bytes": `fix` says what to do instead, and is empty for what
    is built anyway (an ISO 9660 image)."""

    name: str
    what: str
    fix: str = ""


ISO9660 = Content("iso9660", "an ISO 9660 image")
TEXT = Content("text", "text", "give a disk image (raw, qcow2, …)")


def _compressed(tool: str) -> Content:
    return Content(tool, f"{tool}-compressed", f"decompress it first ({tool} -d)")


def _archive(kind: str, extract: str) -> Content:
    return Content(kind, f"a {kind} archive", f"extract the disk from it first ({extract})")


_ZSTD, _ZIP, _LZ4 = _compressed("zstd"), _archive("zip", "unzip"), _compressed("lz4")
_BZIP2 = _compressed("bzip2")
# (offset, magic, what it is): the magic numbers as the formats' own specifications give them.
_MAGICS = (
    (0, b"\xfd7zXZ\x00", _compressed("xz")),
    (0, b"\x1f\x8b\x08", _compressed("gzip")),  # 08: deflate, gzip's one method
    (0, b"\x28\xb5\x2f\xfd", _ZSTD),
    (0, b"\x04\x22\x4d\x18", _LZ4),
    (0, b"\x02\x21\x4c\x18", _LZ4),  # lz4's legacy frame
    (0, b"LZIP", _compressed("lzip")),
    (0, b"7z\xbc\xaf\x27\x1c", _archive("7z", "7z x")),
    (0, b"PK\x03\x04", _ZIP),
    (0, b"PK\x05\x06", _ZIP),  # an empty zip: its end record alone
    (0, b"PK\x07\x08", _ZIP),  # a spanned zip's first part
    (257, b"ustar", _archive("tar", "tar -xf")),  # POSIX "ustar\0" and GNU "ustar  "
)
_LINE_BREAKS = str.maketrans("", "", "\t\n\r\f\v")


def identify(head: bytes) -> Content | None:
    """What DISK's first bytes (up to HEAD_BYTES of them) say it is, or None for bytes that name nothing."""
    for offset, magic, content in _MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return content
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0":
        return _BZIP2
    # A zstd stream may start with skippable frames (magic 0x184D2A50-5F, little-endian), as pzstd writes them.
    if head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return _ZSTD
    if any(head[at:at + len(ISO9660_MAGIC)] == ISO9660_MAGIC for at in ISO9660_MAGIC_AT):
        return ISO9660
    return TEXT if _is_text(head) else None


def _is_text(head: bytes) -> bool:
    """Lines of UTF-8 printable characters and whitespace only (a multibyte character cut at the end of a full
    head counts): a file nobody boots."""
    if b"\n" not in head:
        return False
    try:
        text = head.decode()
    except UnicodeDecodeError as error:
        if len(head) < HEAD_BYTES or error.reason != "unexpected end of data":
            return False
        text = head[:error.start].decode()
    return text.removeprefix("\ufeff").translate(_LINE_BREAKS).isprintable()


def check_disk(path: str, head: bytes, size: int, fmt: str, raw: bool) -> Content | None:
    """Refuse DISK where it is plainly not a disk; otherwise what its bytes say it is (ISO 9660, or None).

    Args:
        path: DISK as the operator named it (for the message).
        head: its first bytes, HEAD_BYTES of them or the whole file when shorter.
        size: its size in bytes.
        fmt: the format formats.detect_format() told from its header ("raw" for no header).
        raw: --raw: it is a raw disk whatever its first bytes look like.

    Raises:
        UsageError: an empty file; compressed, an archive or text (unless `raw`); a raw disk of a partial sector;
            --raw for a disk with another format's header.
    """
    if size == 0:
        raise UsageError(f"DISK {path} is empty (0 bytes), not a disk; give a disk image (raw, qcow2, …)")
    if fmt != "raw":
        if raw:
            raise UsageError(f"--raw: DISK {path} is a {fmt} disk by its header, not raw; drop --raw")
        return None
    content = identify(head)
    if content is not None and content.fix and not raw:
        raise UsageError(f"DISK {path} is {content.what}, not a disk; {content.fix}, {RAW_HINT}")
    if size % SECTOR:
        raise UsageError(f"DISK {path} is {size} bytes, not a multiple of 512 (qemu would read a partial sector); "
                         f"pad it with zeros first: truncate -s %512 {shlex.quote(path)}")
    return content if content is ISO9660 else None
