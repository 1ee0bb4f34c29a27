"""build's compressed layer on every core (`build.parallel_gzip`, `build.layer`): the same bytes for any number of
threads, read back by zlib, Python's gzip and gzip(1) as the input, holes compressed once."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from cdisk.core.commands.build import layer, parallel_gzip
from cdisk.core.commands.build.parallel_gzip import BLOCK_SIZE, ParallelGzip, crc32_combine
from cdisk.core.layers.decompressor import zstd

# A fixed input with data, text, zeros between and across blocks and a tail: (bytes) or (a run of zeros).
_RNG = random.Random(24)
PIECES: list[bytes | int] = [b"header" * 100, 5 * BLOCK_SIZE + 100, _RNG.randbytes(3 * BLOCK_SIZE + 7), 777,
                             b"text, text " * 40000, 8 << 20, _RNG.randbytes(12345), 2 * BLOCK_SIZE]
INPUT = b"".join(bytes(p) if isinstance(p, int) else p for p in PIECES)
# The layer's gzip of PIECES: a change here changes every gzip layer's digest (a constant of the scheme, or
# zlib's deflate itself).
PINNED = "fc88ca0c32c6da2c8bf33a189d7eff8b265e3b6d04c019969aa2da14fee9e36b"


def _gzip(jobs: int, pieces: list[bytes | int] = PIECES) -> bytes:
    out: list[bytes] = []
    writer = ParallelGzip(out.append, jobs)
    for piece in pieces:
        writer.write_zeros(piece) if isinstance(piece, int) else writer.write(piece)
    writer.close()
    return b"".join(out)


def test_one_thread_and_many_write_the_same_bytes() -> None:
    outputs = {jobs: _gzip(jobs) for jobs in (1, 2, 3, 8)}
    assert len(set(outputs.values())) == 1
    assert hashlib.sha256(outputs[1]).hexdigest() == PINNED


def test_how_the_input_is_handed_over_does_not_matter() -> None:
    """Blocks are counted from the first byte: the same input in other pieces gives the same member."""
    steps = [INPUT[i:i + 9999] for i in range(0, len(INPUT), 9999)]
    assert _gzip(2, list(steps)) == _gzip(1)


def test_the_member_reads_back_as_its_input() -> None:
    member = _gzip(4)
    assert gzip.decompress(member) == INPUT
    assert zlib.decompress(member, 31) == INPUT
    assert member[:10] == bytes.fromhex("1f8b0800000000000003"), "mtime 0, no name: as zlib writes it"


@pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip(1) is not installed")
def test_gzip_tool_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "layer.gz"
    path.write_bytes(_gzip(2))
    subprocess.run(["gzip", "-t", path], check=True)
    assert subprocess.run(["gzip", "-dc", path], check=True, capture_output=True).stdout == INPUT


@pytest.mark.parametrize("pieces", [[], [b""], [b"x"], [BLOCK_SIZE], [bytes(BLOCK_SIZE - 1), b"a"],
                                    [os.urandom(2 * BLOCK_SIZE)]], ids=["nothing", "empty", "byte", "zero-block",
                                                                        "block", "two-blocks"])
def test_edges(pieces: list[bytes | int]) -> None:
    expected = b"".join(bytes(p) if isinstance(p, int) else p for p in pieces)
    assert gzip.decompress(_gzip(1, pieces)) == expected
    assert _gzip(1, pieces) == _gzip(3, pieces)


def test_zeros_are_compressed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    deflate = parallel_gzip.deflate_block

    def counted(block: bytes, window: bytes, last: bool, level: int = 6) -> tuple[bytes, int]:
        calls.append(len(block))
        return deflate(block, window, last, level)

    monkeypatch.setattr(parallel_gzip, "deflate_block", counted)
    parallel_gzip._zero_block.cache_clear()
    member = _gzip(1, [b"data", 1 << 30])
    assert len(calls) <= 4, "a GiB of zeros: the first block, the zero block once, the last"
    assert zlib.decompressobj(31).decompress(member, 1 << 20)[:4] == b"data"
    assert int.from_bytes(member[-4:], "little") == (1 << 30) + 4


@pytest.mark.parametrize("lengths", [(0, 5), (5, 0), (1000, BLOCK_SIZE), (BLOCK_SIZE, 3), (70000, 123457)])
def test_crc32_combine_is_zlibs(lengths: tuple[int, int]) -> None:
    first, second = os.urandom(lengths[0]), os.urandom(lengths[1])
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def _sparse_disk(path: Path) -> int:
    """A raw disk with data between holes, not a multiple of a block long."""
    rng = random.Random(7)
    with open(path, "wb") as f:
        for offset in (0, 3 << 20, (9 << 20) + 4096):
            f.seek(offset)
            f.write(rng.randbytes(700_000))
        f.truncate((12 << 20) + 1536)
    return path.stat().st_size


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layer_is_the_same_for_any_number_of_threads(tmp_path: Path, compression: str) -> None:
    disk = tmp_path / "disk.raw"
    size = _sparse_disk(disk)
    written = {}
    fd = os.open(disk, os.O_RDONLY)
    try:
        for jobs in (1, 2, 5):
            out_path = tmp_path / f"layer-{jobs}"
            out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                written[jobs] = layer.write_layer(fd, size, out, compression, 0, jobs=jobs)
            finally:
                os.close(out)
            blob = out_path.read_bytes()
            assert written[jobs].digest == "sha256:" + hashlib.sha256(blob).hexdigest()
            assert written[jobs].size == len(blob)
            tar = {"gzip": gzip.decompress, "zstd": zstd.decompress, "none": bytes}[compression](blob)
            assert written[jobs].diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
            assert tar[layer.DATA_ALIGNMENT:layer.DATA_ALIGNMENT + size] == disk.read_bytes()
    finally:
        os.close(fd)
    assert written[1] == written[2] == written[5]
