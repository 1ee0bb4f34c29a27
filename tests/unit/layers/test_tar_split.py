"""A layer put back together from its tar-split and its directory: the very tar (its sha256), and the file that
changed named by its CRC-64, as tar-split's assembly names it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.errors import ImageError
from cdisk.core.layers import tar_split
from cdisk.core.layers.tar_split import FileEntry, crc64_iso, crc_mismatches, entries, open_in, reassemble


def _go_crc64_iso(data: bytes, crc: int = 0) -> int:
    """Go's hash/crc64 as it is written: a table of the reversed polynomial, a byte at a time."""
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0xD800000000000000 if c & 1 else c >> 1
        table.append(c)
    crc ^= (1 << 64) - 1
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ ((1 << 64) - 1)


def test_crc64_is_go_s_iso_table() -> None:
    # CRC-64/GO-ISO's check value (Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))).
    assert crc64_iso(b"123456789") == _go_crc64_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_iso(b"6789", crc64_iso(b"12345")) == 0xB90956C775A41001
    assert crc64_iso(b"") == 0


@pytest.mark.parametrize("size", [1, 7, 8, 15, 16, 17, 63, 64, 65, 127, 1000, 4097, 65536 + 3])
def test_crc64_of_every_length_and_chained(size: int) -> None:
    data = os.urandom(size)
    assert crc64_iso(data) == _go_crc64_iso(data)
    assert crc64_iso(data[size // 3:], crc64_iso(data[:size // 3])) == _go_crc64_iso(data)
    assert crc64_iso(b"\xff" * size) == _go_crc64_iso(b"\xff" * size)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _split(tar: bytes) -> bytes:
    """The tar-split tar-split's disassembly writes of `tar` (`tar/asm/disassemble.go`): a segment of the bytes
    before each content, a file entry (name, size, CRC-64) per member, a segment of the padding and the end."""
    lines: list[dict[str, object]] = []
    position = 0

    def segment(data: bytes) -> None:
        if data:
            lines.append({"type": 2, "payload": base64.b64encode(data).decode(), "position": len(lines)})

    with tarfile.open(fileobj=io.BytesIO(tar), mode="r") as reader:
        for member in reader:
            segment(tar[position:member.offset_data])
            name = member.name.encode()
            crc = crc64_iso(tar[member.offset_data:member.offset_data + member.size]).to_bytes(8, "big")
            lines.append({"type": 1, "name": member.name + "/" * member.isdir(), "size": member.size,
                          "payload": base64.b64encode(crc).decode() if member.size else None,
                          "position": len(lines)})
            assert name
            position = member.offset_data + member.size
    segment(tar[position:])
    return gzip.compress(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[tuple[bytes, bytes, int, Path]]:
    """A real tar of a directory and two files (one of 3 MiB: several reads), its tar-split, and its directory
    as a store unpacks it."""
    files = {"disk/": b"", "disk/disk.qcow2": os.urandom(3 << 20) + b"tail", "etc/hostname": b"vm\n"}
    tar = _tar({"etc/": b"", **files})
    diff = tmp_path / "diff"
    for name, data in {"etc/": b"", **files}.items():
        if name.endswith("/"):
            (diff / name).mkdir(parents=True)
        else:
            (diff / name).write_bytes(data)
    fd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tar, _split(tar), fd, diff
    finally:
        os.close(fd)


def test_an_intact_layer_is_its_tar(layer: tuple[bytes, bytes, int, Path]) -> None:
    tar, split, fd, _ = layer
    read: list[int] = []
    found = reassemble(io.BytesIO(split), fd, "t", read.append)
    assert found.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert (found.size, found.unreadable) == (len(tar), {})
    assert sum(read) == (3 << 20) + 4 + 3 and max(read) == tar_split.CHUNK
    assert crc_mismatches(io.BytesIO(split), fd, "t") == []


def test_a_flipped_byte_is_named(layer: tuple[bytes, bytes, int, Path]) -> None:
    tar, split, fd, diff = layer
    disk = diff / "disk" / "disk.qcow2"
    data = bytearray(disk.read_bytes())
    data[2 << 20] ^= 1
    disk.write_bytes(bytes(data))
    found = reassemble(io.BytesIO(split), fd, "t")
    assert found.diff_id != "sha256:" + hashlib.sha256(tar).hexdigest() and found.unreadable == {}
    assert crc_mismatches(io.BytesIO(split), fd, "t") == ["disk/disk.qcow2"]


@pytest.mark.parametrize(("change", "why"), [("truncate", "bytes where the layer's metadata says"),
                                             ("grow", "bytes where the layer's metadata says"),
                                             ("remove", "No such file"), ("symlink", "link")])
def test_a_file_not_as_the_metadata_says(layer: tuple[bytes, bytes, int, Path], change: str, why: str) -> None:
    _, split, fd, diff = layer
    hostname = diff / "etc" / "hostname"
    if change == "truncate":
        os.truncate(hostname, 2)
    elif change == "grow":
        hostname.write_bytes(b"vm\nx")
    else:
        hostname.unlink()
        if change == "symlink":
            hostname.symlink_to("/etc/hostname")
    found = reassemble(io.BytesIO(split), fd, "t")
    assert list(found.unreadable) == ["etc/hostname"]
    assert why.lower() in found.unreadable["etc/hostname"].lower()
    assert crc_mismatches(io.BytesIO(split), fd, "t") == ["etc/hostname"]


def test_names_are_read_below_the_layer_only(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "f").write_bytes(b"in")
    (tmp_path / "f").write_bytes(b"out")
    (tmp_path / "root" / "up").symlink_to("..")
    fd = os.open(tmp_path / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in (b"a/f", b"./a/f", b"/a/f", b"../a/f", b"a/../../a/f"):
            found = open_in(fd, name)
            assert os.read(found, 9) == b"in"
            os.close(found)
        with pytest.raises(OSError):
            open_in(fd, b"up/f")  # a link in the way is not followed
        with pytest.raises(OSError):
            open_in(fd, b"a")
    finally:
        os.close(fd)


def test_a_raw_name_and_the_entries() -> None:
    raw = b"disk/\xff.qcow2"
    lines = [{"type": 2, "payload": base64.b64encode(b"hdr").decode()},
             {"type": 1, "name": "disk/\ufffd.qcow2", "name_raw": base64.b64encode(raw).decode(), "size": 4,
              "payload": base64.b64encode(bytes(8)).decode()}]
    split = gzip.compress(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    assert list(entries(io.BytesIO(split), "t")) == [b"hdr", FileEntry(raw, 4, bytes(8))]


@pytest.mark.parametrize("split", [b"not gzip", gzip.compress(b"{not json\n"), gzip.compress(b'{"type": 7}\n'),
                                   gzip.compress(b'{"type": 2, "payload": "!!"}\n'), gzip.compress(b"[]\n"),
                                   gzip.compress(b'{"type": 2, "payload": ""}\n')[:-6],
                                   # nested past Python's recursion limit; a name holding a NUL; a line too long
                                   gzip.compress(b"[" * 200_000 + b"\n"),
                                   gzip.compress(b'{"type": 1, "name_raw": "YQBi", "size": 1}\n'),
                                   gzip.compress(b'{"type": 2, "payload": "' + b"A" * (tar_split.MAX_LINE + 4)
                                                 + b'"}\n')],
                         ids=["not-gzip", "not-json", "type-7", "bad-base64", "a-list", "cut", "nested", "nul",
                              "long"])
def test_a_damaged_tar_split_is_one_error(split: bytes) -> None:
    with pytest.raises(ImageError, match=r"^the tar-split of x cannot be read \(.*\); the store is damaged: "):
        list(entries(io.BytesIO(split), "the tar-split of x"))


def test_a_device_where_a_file_should_be_is_never_opened(tmp_path: Path) -> None:
    # /dev/null stands for any device a damaged tar-split could name: judged by an O_PATH descriptor, not opened.
    os.symlink("/dev", tmp_path / "dev")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            open_in(root, b"dev/null")  # a link on the way
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
        with pytest.raises(OSError, match="not a regular file"):
            open_in(root, b"null")
    finally:
        os.close(root)
