"""Disks outside /disk/: which headers make a file disk-like, and the search's order and bounds (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdisk.core.disk import anywhere
from cdisk.core.disk.anywhere import MIN_SIZE, Sniffed, in_bytes, search, sniff
from cdisk.core.tree.merged import DIR, FILE, SYMLINK, LayerMember, MergedTree
from tests.images import gpt_disk, sh

MiB = 1 << 20


def _sniffed(head: bytes, size: int = 2 * MiB) -> Sniffed | None:
    return sniff(in_bytes(head), size)


def _at(offset: int, data: bytes, size: int = 0x9000) -> bytes:
    block = bytearray(max(size, offset + len(data)))
    block[offset:offset + len(data)] = data
    return bytes(block)


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed"])
def test_image_formats_are_told_by_their_magic(tmp_path: Path, fmt: str) -> None:
    disk = tmp_path / f"d.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, disk, "8M")
    head = disk.read_bytes()[:anywhere.SNIFF_BYTES]
    # Whatever its length: an image format's file need not be whole sectors.
    assert _sniffed(head, MIN_SIZE + 1) == Sniffed(fmt)


def test_a_luks_volume_is_disk_like() -> None:
    # (qemu-img create -f luks spends a second or more on its key derivation: the header's magic is enough.)
    assert _sniffed(b"LUKS\xba\xbe\x00\x01" + bytes(4088)) == Sniffed("luks")


def test_raw_disks_are_told_by_what_they_hold(tmp_path: Path) -> None:
    gpt = gpt_disk(tmp_path / "gpt.raw").read_bytes()
    assert _sniffed(gpt) == Sniffed("raw", "GPT")
    mbr = bytearray(_at(510, b"\x55\xaa"))
    mbr[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (4096).to_bytes(4, "little")
    assert _sniffed(bytes(mbr)) == Sniffed("raw", "MBR")
    assert _sniffed(_at(1080, b"\x53\xef")) == Sniffed("raw", "ext2/3/4")
    assert _sniffed(b"XFSB" + bytes(4092)) == Sniffed("raw", "XFS")
    assert _sniffed(_at(0x8001, b"CD001")) == Sniffed("raw", "ISO 9660")
    assert Sniffed("raw", "GPT").describe(2 * MiB) == "raw GPT, 2.0 MiB"
    assert Sniffed("qcow2").describe(6 << 30) == "qcow2, 6.0 GiB"


def test_what_is_no_disk_is_not_disk_like(tmp_path: Path) -> None:
    gpt = gpt_disk(tmp_path / "gpt.raw").read_bytes()
    assert _sniffed(gpt, MIN_SIZE - 512) is None  # too small to be looked at
    assert _sniffed(gpt, 2 * MiB + 1) is None  # a raw disk is whole sectors
    assert _sniffed(bytes(0x9000)) is None  # zeros
    assert _sniffed(b"\x7fELF\x02\x01\x01" + bytes(0x9000)) is None
    # A file system's boot sector ends in 0x55AA too, with boot code where a partition table would be.
    assert _sniffed(b"\xeb\x3c\x90MSWIN4.1" + bytes(435) + b"\xfa\x31\xc0" * 21 + b"\x55\xaa") is None
    # The signature with an empty table: nothing partitioned.
    assert _sniffed(_at(510, b"\x55\xaa")) is None


def f(path: str, size: int = 2 * MiB, offset: int = 512) -> LayerMember:
    return LayerMember(path, FILE, 0, offset=offset, size=size)


def test_the_search_walks_breadth_first_and_follows_no_link() -> None:
    tree = MergedTree([[f("z.qcow2"), f("a/b/deep.qcow2"), f("a/top.raw"), f("small.qcow2", size=4096),
                        LayerMember("link.qcow2", SYMLINK, linkname="z.qcow2"),
                        LayerMember("loop", SYMLINK, linkname="."), f("a/not-a-disk")]])
    asked: list[str] = []

    def told(path: str, member: LayerMember) -> Sniffed | None:
        asked.append(path)
        return None if path.endswith("not-a-disk") else Sniffed("qcow2")

    found = search(tree, told)
    # The root's files, then a's, then a/b's; names in order; the small file's header is never read.
    assert asked == ["/z.qcow2", "/a/not-a-disk", "/a/top.raw", "/a/b/deep.qcow2"]
    assert [d.path for d in found.found] == ["/z.qcow2", "/a/top.raw", "/a/b/deep.qcow2"]
    assert found.stopped == ""
    assert found.found[0].describe() == "/z.qcow2 (qcow2, 2.0 MiB)"


def test_the_search_is_bounded_in_headers_and_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = MergedTree([[f(f"d/{n:03}.bin") for n in range(20)] + [LayerMember(f"e/{n:03}", DIR) for n in range(20)]])
    monkeypatch.setattr(anywhere, "MAX_HEADERS", 5)
    asked: list[str] = []
    found = search(tree, lambda path, member: asked.append(path) or Sniffed("qcow2"))  # type: ignore[func-returns-value]
    assert len(asked) == 5 and len(found.found) == 5
    assert found.stopped == "the search stops after 5 files of 1.0 MiB or more"
    monkeypatch.setattr(anywhere, "MAX_HEADERS", 100)
    monkeypatch.setattr(anywhere, "MAX_VISITED", 10)
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    # The root's two directories, then eight of d's files.
    assert len(found.found) == 8 and found.stopped == "the search stops after 10 entries"
