"""Disks outside /disk/: when /disk/ holds none, a bounded search of the whole image for files whose header says
they are disks, so that the error names them (`candidates.find_disk`) and `ls` lists them.

A file is looked at only when it is a regular file of at least `MIN_SIZE` bytes; it is disk-like when its header
is an image format's (qcow2, vmdk, vdi, vhdx, vpc, qed, luks) or, for a file whose length is a whole number of
sectors, a raw disk's (a GPT, an MBR partition table, an ext2/3/4 or XFS superblock, an ISO 9660 volume). qed and
luks files are named as what cdisk does not read (`Sniffed.refused`), never as a --path to pass.

The walk goes breadth first (the image's top directories first, names in order), follows no symlink (a link's
target is met at its own path), and is bounded whatever the image, saying where a bound cut it: it looks no
deeper than `MAX_DEPTH` levels (disks sit shallow: /disk/x, /image/podvm.qcow2), lists at most `MAX_DIRECTORIES`
directories, reads at most `MAX_VISITED` entries (a directory and each name in it, as `ImageTree.read` counts
them; a directory that would go past the bound is not listed at all, so that a huge one costs no more than the
bound), reads at most `MAX_HEADERS` headers (the names of one file, hard links, cost one: by the tree's
`identity`) and names at most `MAX_HEADERS` finds. The same image gives the same answer on every machine (no time
bound) and, short of the entry bound, by every reading method: stacked from layer directories, a directory is
read in each layer that holds it, and each of those readings counts.

Nothing found here is ever taken without `--path`: /disk/ is KubeVirt's contract, anything else a guess, and a
cron job must not start reading another file because an image changed.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from cdisk.core.disk.formats import (
    ISO9660_MAGIC,
    ISO9660_MAGIC_AT,
    QCOW2_MAGIC,
    VDI_SIGNATURE,
    VMDK_SPARSE_MAGIC,
    ReadAt,
)
from cdisk.core.errors import TooManyEntries
from cdisk.core.shell import shell_word
from cdisk.core.sizes import size_text
from cdisk.core.tree.merged import DIR, FILE, ImageTree, LayerMember

MIN_SIZE = 1 << 20
MAX_HEADERS = 256
MAX_VISITED = 100_000
MAX_DIRECTORIES = 10_000
# Entries at most this many levels below the root are looked at (/a/…/o/disk.qcow2: 15 directories and a file);
# PATH_MAX allows some 2,000.
MAX_DEPTH = 16
SECTOR = 512
# What a header is judged by: the first 4 KiB (every magic but ISO 9660's), and ISO 9660's volume descriptor.
HEAD_BYTES = 4096
SNIFF_BYTES = ISO9660_MAGIC_AT[0] + len(ISO9660_MAGIC)

_IMAGE_MAGICS = ((QCOW2_MAGIC, "qcow2"), (VMDK_SPARSE_MAGIC, "vmdk"), (b"vhdxfile", "vhdx"), (b"conectix", "vpc"),
                 (b"QED\0", "qed"), (b"LUKS\xba\xbe", "luks"))
_EXT_MAGIC_AT, _EXT_MAGIC = 1024 + 56, b"\x53\xef"


# Formats the search tells but convert refuses (`formats.detect_format`): named, never offered as a --path.
NOT_READ = {"qed": "cdisk does not read qed", "luks": "cdisk does not read an encrypted disk"}


@dataclass(frozen=True)
class Sniffed:
    """What a header says a file is: `format` as qemu names it, and for raw what the disk holds (`layout`)."""

    format: str
    layout: str = ""

    @property
    def refused(self) -> str:
        """Why convert would refuse the file whatever else it holds (qed, luks); "" when it may read it."""
        return NOT_READ.get(self.format, "")

    def describe(self, size: int) -> str:
        """`qcow2, 6.0 GiB`, `raw GPT, 2.0 GiB`, `qed, 1.0 GiB: cdisk does not read qed`: the format, the file's
        size in the image, and why convert would refuse it."""
        what = f"{self.format} {self.layout}" if self.layout else self.format
        return f"{what}, {size_text(size)}" + (f": {self.refused}" if self.refused else "")


def _mbr(head: bytes) -> bool:
    """A DOS partition table: the boot signature, every entry's boot flag 0x00 or 0x80, and one used entry."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return False
    entries = [head[446 + 16 * i:462 + 16 * i] for i in range(4)]
    if any(entry[0] not in (0x00, 0x80) for entry in entries):
        return False  # boot code where the table should be: a file system's boot sector, not a partition table
    return any(entry[4] != 0 and struct.unpack_from("<I", entry, 12)[0] != 0 for entry in entries)


def sniff(read_at: ReadAt, size: int) -> Sniffed | None:
    """What the file of `size` bytes read by `read_at` is, when its header says it is a disk; else None."""
    if size < MIN_SIZE:
        return None
    head = read_at(0, HEAD_BYTES)
    for magic, fmt in _IMAGE_MAGICS:
        if head.startswith(magic):
            return Sniffed(fmt)
    if len(head) >= 68 and struct.unpack_from("<I", head, 64)[0] == VDI_SIGNATURE:
        return Sniffed("vdi")
    if size % SECTOR:
        return None  # a raw disk is whole sectors
    if head[512:520] == b"EFI PART":
        return Sniffed("raw", "GPT")
    if _mbr(head):
        return Sniffed("raw", "MBR")
    if head[_EXT_MAGIC_AT:_EXT_MAGIC_AT + 2] == _EXT_MAGIC:
        return Sniffed("raw", "ext2/3/4")
    if head.startswith(b"XFSB"):
        return Sniffed("raw", "XFS")
    if read_at(ISO9660_MAGIC_AT[0], len(ISO9660_MAGIC)) == ISO9660_MAGIC:
        return Sniffed("raw", "ISO 9660")
    return None


def in_bytes(data: bytes) -> ReadAt:
    """A `ReadAt` over bytes held in memory (a compressed layer's head, peeked as it goes by)."""
    return lambda offset, length: data[offset:offset + length]


SniffMember = Callable[[str, LayerMember], Sniffed | None]
"""sniff_member(image_path, member) -> what the regular file `member` found at `image_path` is, or None."""


@dataclass(frozen=True)
class DiskLike:
    """A disk-like file found by the search: its path in the image (`/image/podvm.qcow2`) and what it is."""

    path: str
    member: LayerMember
    sniffed: Sniffed

    def describe(self) -> str:
        """`/image/podvm.qcow2 (qcow2, 6.0 GiB)`: the path as one shell word (`shell.shell_word`), what it is."""
        return f"{shell_word(self.path)} ({self.sniffed.describe(self.member.size)})"


@dataclass(frozen=True)
class Search:
    """What the search found, in the order it met them; `stopped` says where a bound cut it short ("": it
    looked at the whole image)."""

    found: list[DiskLike]
    stopped: str = ""


def search(tree: ImageTree, sniff_member: SniffMember) -> Search:
    """The disk-like files of the image, within the bounds of the module docstring."""
    found: list[DiskLike] = []
    pending: deque[str] = deque([""])
    headers = listed = 0
    start = tree.read
    too_deep = False
    told: dict[Hashable, Sniffed | None] = {}  # what each file's header said, by the tree's identity

    def stopped(after: str) -> Search:
        deep = f"{MAX_DEPTH} levels" if too_deep else ""
        return Search(found, "the search stops after " + " and ".join(filter(None, (deep, after))))

    while pending:
        directory = pending.popleft()
        listed += 1
        if listed > MAX_DIRECTORIES:
            return stopped(f"{MAX_DIRECTORIES} directories")
        try:
            members = tree.members(directory, MAX_VISITED - (tree.read - start))
        except TooManyEntries:
            return stopped(f"{MAX_VISITED} entries")
        for member in members:
            if member.kind == DIR:
                if member.path.count("/") + 1 < MAX_DEPTH:
                    pending.append(member.path)
                else:
                    too_deep = True
            elif member.kind == FILE and member.size >= MIN_SIZE and not member.sparse:
                path = f"/{member.path}"
                identity = tree.identity(member)
                key = ("path", member.path) if identity is None else identity
                if key not in told:
                    headers += 1
                    if headers > MAX_HEADERS:
                        return stopped(f"{MAX_HEADERS} files of {size_text(MIN_SIZE)} or more")
                    told[key] = sniff_member(path, member)
                sniffed = told[key]
                if sniffed is not None:
                    if len(found) == MAX_HEADERS:
                        return stopped(f"{MAX_HEADERS} disk-like files")
                    found.append(DiskLike(path, member, sniffed))
    return stopped("") if too_deep else Search(found)
