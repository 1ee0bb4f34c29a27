"""The gzip/zstd stream of a compressed layer, against the reference readers on every member boundary (pure)."""

from __future__ import annotations

import gzip
import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.errors import UnsafeImageError
from cdisk.core.layers.decompressor import Decompressed
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.progress import NoProgress


def _stream(path: Path, data: bytes) -> Iterator[Decompressed]:
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield Decompressed(LayerBlob(path, 0, len(data), "sha256:" + "0" * 64, fd=fd), "gzip", NoProgress())
    finally:
        os.close(fd)


def _read_all(stream: Decompressed, size: int, bound: int) -> bytes:
    parts, total = [], 0
    while chunk := stream.read(size):
        parts.append(chunk)
        total += len(chunk)
        assert total <= bound, "the stream hands out more than it holds"
    return b"".join(parts)


_NOISE = random.Random(7).randbytes(300_000)
# Members whose ends fall on zlib's output bounds (1 MiB multiples), inside them, and empty ones: Go's reader
# (multistream, as podman and docker read a layer) and Python's gzip module read each of these the same.
MEMBERS = {
    "ends-on-an-output-bound": [bytes(range(256)) * 12288] * 2,  # 3 MiB each: the case that looped
    "small-then-large": [b"x" * 3000, bytes(range(256)) * 4096, b""],
    "incompressible": [_NOISE, _NOISE[:1000], _NOISE],
    "many-tiny": [bytes([n]) * n for n in range(200)],
}


@pytest.mark.parametrize("size", [511, 4096, 65_536, 1 << 20, 3 << 20])
@pytest.mark.parametrize("members", MEMBERS.values(), ids=MEMBERS.keys())
def test_multi_member_gzip_reads_as_the_reference_reader(tmp_path: Path, members: list[bytes], size: int) -> None:
    data = b"".join(gzip.compress(m, mtime=0) for m in members)
    expected = gzip.decompress(data)
    for stream in _stream(tmp_path / "layer", data):
        assert _read_all(stream, size, len(expected)) == expected


def _member(data: bytes, flags: int = 0, name: bytes = b"", comment: bytes = b"", hcrc: str = "") -> bytes:
    """One gzip member written by hand, with the header fields zlib's own writer never sets."""
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    fields = (name + b"\0" if name else b"") + (comment + b"\0" if comment else b"")
    if hcrc == "go":  # what Go checks: the CRC of the first ten bytes only
        fields += (zlib.crc32(head) & 0xFFFF).to_bytes(2, "little")
    elif hcrc == "rfc":  # RFC 1952's: of the whole header
        fields += (zlib.crc32(head + fields) & 0xFFFF).to_bytes(2, "little")
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(data) + packer.flush()
    return head + fields + body + zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")


DATA = bytes(range(256)) * 64
NAME, COMMENT, HCRC = 0x08, 0x10, 0x02
# What Go's compress/gzip reads (podman and docker unpack a layer with it), member headers alike.
READ_AS_GO = {
    "reserved-flag-bits": _member(DATA, flags=0xE0),
    "comment-of-511-bytes": _member(DATA, flags=COMMENT, comment=b"c" * 511),
    "name-and-go-header-crc": _member(DATA, flags=NAME | HCRC, name=b"disk.tar", hcrc="go"),
}
REFUSED_AS_GO = {
    "comment-of-512-bytes": _member(DATA, flags=COMMENT, comment=b"c" * 512),
    "name-of-600-bytes": _member(DATA, flags=NAME, name=b"n" * 600),
    "name-and-rfc-header-crc": _member(DATA, flags=NAME | HCRC, name=b"disk.tar", hcrc="rfc"),
    "wrong-data-crc": _member(DATA)[:-8] + b"\0\0\0\0" + len(DATA).to_bytes(4, "little"),
    "wrong-length": _member(DATA)[:-4] + (len(DATA) + 1).to_bytes(4, "little"),
    "garbage-after-a-member": _member(DATA) + b"garbage!!!",
}


@pytest.mark.parametrize("data", READ_AS_GO.values(), ids=READ_AS_GO.keys())
def test_member_headers_go_reads_are_read(tmp_path: Path, data: bytes) -> None:
    for stream in _stream(tmp_path / "layer", data + data):
        assert _read_all(stream, 4096, 2 * len(DATA)) == DATA + DATA


@pytest.mark.parametrize("data", REFUSED_AS_GO.values(), ids=REFUSED_AS_GO.keys())
def test_member_headers_go_refuses_are_refused(tmp_path: Path, data: bytes) -> None:
    for stream in _stream(tmp_path / "layer", data):
        with pytest.raises(UnsafeImageError, match="stream is corrupt"):
            _read_all(stream, 4096, 2 * len(DATA))


# Cut short: in a member's header, in its name, in its trailer. (Go ends the stream cleanly when a *later*
# member's name is cut — its readString hands back io.EOF — and reads the layer as shorter: cdisk refuses that.)
CUT = {
    "in-the-first-header": _member(DATA)[:6],
    "in-a-later-header": _member(DATA) + _member(DATA)[:6],
    "in-a-later-name": _member(DATA) + _member(DATA, flags=NAME, name=b"n" * 100)[:50],
    "in-a-trailer": _member(DATA)[:-3],
}


@pytest.mark.parametrize("data", CUT.values(), ids=CUT.keys())
def test_a_stream_cut_short_is_refused(tmp_path: Path, data: bytes) -> None:
    for stream in _stream(tmp_path / "layer", data):
        with pytest.raises(UnsafeImageError, match="cut short"):
            _read_all(stream, 4096, 2 * len(DATA))
