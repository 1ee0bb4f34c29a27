"""What `cdisk build` refuses as plainly not a disk: each magic by its exact bytes and as the real compressors and
archivers write it, text, the empty file and the 512 rule, and what --raw lifts."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from pathlib import Path

import pytest

from cdisk.core.commands.build.disk_check import HEAD_BYTES, ISO9660, TEXT, Content, check_disk, identify
from cdisk.core.errors import UsageError
from tests.images import sh

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

PAD = bytes(1024)


def _at(offset: int, magic: bytes, size: int = HEAD_BYTES) -> bytes:
    head = bytearray(size)
    head[offset:offset + len(magic)] = magic
    return bytes(head)


@pytest.mark.parametrize(("head", "name"), [
    (b"\xfd\x37\x7a\x58\x5a\x00" + PAD, "xz"),
    (b"\x1f\x8b\x08" + PAD, "gzip"),
    (b"\x28\xb5\x2f\xfd" + PAD, "zstd"),
    (b"\x50\x2a\x4d\x18" + PAD, "zstd"),  # a skippable frame first
    (b"\x5f\x2a\x4d\x18" + PAD, "zstd"),
    (b"BZh1" + PAD, "bzip2"),
    (b"BZh9" + PAD, "bzip2"),
    (b"\x04\x22\x4d\x18" + PAD, "lz4"),
    (b"\x02\x21\x4c\x18" + PAD, "lz4"),
    (b"LZIP\x01" + PAD, "lzip"),
    (b"7z\xbc\xaf\x27\x1c" + PAD, "7z"),
    (b"PK\x03\x04" + PAD, "zip"),
    (b"PK\x05\x06" + bytes(18), "zip"),  # an empty zip: 22 bytes
    (b"PK\x07\x08" + PAD, "zip"),
    (_at(257, b"ustar\x0000", 512), "tar"),
    (_at(257, b"ustar  \x00", 512), "tar"),
    (_at(0x8000, b"\x01CD001\x01"), "iso9660"),
    (_at(0x8800, b"\x00CD001\x01"), "iso9660"),
    (_at(0x9000, b"\xffCD001\x01"), "iso9660"),
    (b"#cloud-config\nusers:\n  - name: \xc3\xa9t\xc3\xa9\n", "text"),
    (b"\xef\xbb\xbfa BOM, then text\r\n\tand a tab\f", "text"),
])
def test_each_magic_by_its_exact_bytes(head: bytes, name: str) -> None:
    found = identify(head)
    assert found is not None and found.name == name


@pytest.mark.parametrize("head", [
    b"", bytes(HEAD_BYTES), b"\xff" * HEAD_BYTES,
    b"\x1f\x8b\x07" + PAD,  # gzip's magic with a method gzip does not know
    b"BZh0" + PAD, b"BZhx" + PAD,
    b"\x60\x2a\x4d\x18" + PAD,  # past zstd's skippable magics
    b"ustar" + PAD,  # tar's magic where tar does not keep it
    _at(0x7FFF, b"CD001"), _at(0x9801, b"CD001"),
    b"QFI\xfb" + PAD,
    _at(510, b"\x55\xaa", 512),  # an MBR
    b"Z" * HEAD_BYTES, b"printable, but no line feed",  # a test pattern, not lines
    b"text and a NUL\x00\n", b"text and an escape \x1b[0m\n", b"not UTF-8 \xe9t\xe9\n",
    b"text cut inside a character\n\xe2\x82",  # the whole file: a cut character is not text
])
def test_what_names_nothing(head: bytes) -> None:
    assert identify(head) is None


def test_a_character_cut_by_the_end_of_a_full_head_is_still_text() -> None:
    head = (b"\xe2\x82\xac\n" * (HEAD_BYTES // 4 - 1)).ljust(HEAD_BYTES - 2, b"a") + b"\xe2\x82"
    assert len(head) == HEAD_BYTES
    assert identify(head) is TEXT
    assert identify(head[:100] + b"\xff" + head[101:]) is None  # one broken character inside


def _tar(fmt: int) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("disk.qcow2")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"QFI\xfb"))
    return data.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return data.getvalue()


@pytest.mark.parametrize(("made", "name"), [
    (lambda: lzma.compress(b"QFI\xfb" + PAD), "xz"),
    (lambda: gzip.compress(b"QFI\xfb" + PAD), "gzip"),
    (lambda: bz2.compress(b"QFI\xfb" + PAD), "bzip2"),
    (lambda: zstd.compress(b"QFI\xfb" + PAD), "zstd"),
    (lambda: _tar(tarfile.GNU_FORMAT), "tar"),
    (lambda: _tar(tarfile.USTAR_FORMAT), "tar"),
    (lambda: _tar(tarfile.PAX_FORMAT), "tar"),
    (lambda: _zip({"disk.img": bytes(512)}), "zip"),
    (lambda: _zip({}), "zip"),
], ids=["xz", "gzip", "bzip2", "zstd", "gnu-tar", "ustar", "pax-tar", "zip", "empty-zip"])
def test_each_kind_as_python_writes_it(made: object, name: str) -> None:
    found = identify(made()[:HEAD_BYTES])  # type: ignore[operator]
    assert found is not None and found.name == name


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc"])
def test_disks_qemu_img_makes_name_nothing(tmp_path: Path, fmt: str) -> None:
    disk = tmp_path / f"d.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, disk, "1M")
    with disk.open("rb") as file:
        assert identify(file.read(HEAD_BYTES)) is None


def _refusal(path: str, head: bytes, size: int, fmt: str = "raw", raw: bool = False) -> str:
    with pytest.raises(UsageError) as caught:
        check_disk(path, head, size, fmt, raw)
    assert "\n" not in caught.value.message and caught.value.exit_code == 2
    return caught.value.message


def test_refusals_say_what_it_is_and_what_to_do() -> None:
    xz = b"\xfd7zXZ\x00" + PAD
    assert _refusal("f.qcow2.xz", xz, 4096) == (
        "DISK f.qcow2.xz is xz-compressed, not a disk; decompress it first (xz -d), or pass --raw if it really "
        "is a raw disk")
    assert _refusal("f.qcow2.xz", xz, 1000).startswith("DISK f.qcow2.xz is xz-compressed"), "the kind comes first"
    assert _refusal("a.tar", _at(257, b"ustar\x0000", 10240), 10240) == (
        "DISK a.tar is a tar archive, not a disk; extract the disk from it first (tar -xf), or pass --raw if it "
        "really is a raw disk")
    assert _refusal("notes", b"hello\n" * 512, 3072) == (
        "DISK notes is text, not a disk; give a disk image (raw, qcow2, …), or pass --raw if it really is a raw disk")
    assert _refusal("my disk", bytes(1000), 1000) == (
        "DISK my disk is 1000 bytes, not a multiple of 512 (qemu would read a partial sector); pad it with zeros "
        "first: truncate -s %512 'my disk'")
    assert _refusal("e", b"", 0) == "DISK e is empty (0 bytes), not a disk; give a disk image (raw, qcow2, …)"


def test_raw_lifts_the_refusals_by_content_only() -> None:
    xz, text = b"\xfd7zXZ\x00" + PAD, b"hello\n" * 512
    assert check_disk("d", xz, 4096, "raw", raw=True) is None
    assert check_disk("d", text, 3072, "raw", raw=True) is None
    assert "not a multiple of 512" in _refusal("d", xz, 4097, raw=True)
    assert "empty" in _refusal("d", b"", 0, raw=True)
    assert _refusal("d.qcow2", b"QFI\xfb" + PAD, 4096, "qcow2", raw=True) == (
        "--raw: DISK d.qcow2 is a qcow2 disk by its header, not raw; drop --raw")


def test_what_is_built() -> None:
    assert check_disk("d", bytes(HEAD_BYTES), 1 << 20, "raw", raw=False) is None
    iso = _at(0x8000, b"\x01CD001\x01")
    assert check_disk("d.iso", iso, 2048 * 40, "raw", raw=False) is ISO9660
    assert check_disk("d.iso", iso, 2048 * 40, "raw", raw=True) is ISO9660
    assert "not a multiple of 512" in _refusal("d.iso", iso, 2048 * 40 + 1)
    # A header's format is the disk's, whatever else its bytes hold; a compressed qcow2 ends anywhere.
    assert check_disk("d.qcow2", b"QFI\xfb" + PAD, 197_133, "qcow2", raw=False) is None
    assert check_disk("d.vmdk", b"KDMV" + PAD, 4096, "vmdk", raw=False) is None


def test_every_refused_kind_says_what_to_do() -> None:
    kinds = [identify(head) for head in (b"\xfd7zXZ\x00", b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd", b"BZh9",
                                         b"\x04\x22\x4d\x18", b"LZIP", b"7z\xbc\xaf\x27\x1c", b"PK\x03\x04",
                                         _at(257, b"ustar", 512), b"text\n")]
    assert all(isinstance(kind, Content) and kind.fix for kind in kinds)
    assert not ISO9660.fix
