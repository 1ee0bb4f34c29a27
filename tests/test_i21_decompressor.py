"""The gzip/zstd stream of a compressed layer, against the reference readers on every member boundary (pure)."""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

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
