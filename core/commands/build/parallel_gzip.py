"""One gzip member compressed on every core, the same bytes whatever the number of threads: pigz's scheme.

The input is cut into `BLOCK_SIZE` blocks counted from its first byte (never from the core count or from how the
caller hands it over); each is compressed on its own as raw deflate, primed with the 32 KiB of input before it
as its dictionary, and ended with a sync flush (a byte boundary, no final bit) — the last one with the final
block. Their concatenation is one deflate stream, which every reader (Go's compress/gzip, gzip -t, zlib) reads
as if one compressor had written it; the header is zlib's (mtime 0, no name, OS unix) and the trailer the CRC32
of the input, combined from the blocks' own, and its size.

A block of zeros after 32 KiB of zeros compresses to the same bytes every time: those are computed once, so a
disk's holes cost no compression at all. zlib releases the GIL while it compresses, so a pool of threads runs
the blocks side by side; at most a fixed number are in flight (memory stays bounded).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache

# Constants of the output: changing one changes every layer's digest. Never derived from the machine.
BLOCK_SIZE = 128 << 10
WINDOW = 32 << 10
LEVEL = 6
# What zlib's gzip wrapper writes at level 6: magic, deflate, no flags, mtime 0, no extra flags, OS unix (3).
HEADER = bytes.fromhex("1f8b08000000000000") + b"\x03"
# Compressed output is handed on in pieces of about this size (a run of zero blocks makes many tiny ones).
_EMIT = 1 << 20
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_ZERO_WINDOW = bytes(WINDOW)
_CRC_POLY = 0xEDB88320


# Past this many threads the caller's one thread (reading, hashing the tar) is the limit, not compression.
MAX_JOBS = 32


def default_jobs() -> int:
    """The threads to compress with: the cores this process may run on (taskset and cpusets count), at most
    `MAX_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_JOBS))


def _multiply(a: int, b: int) -> int:
    """a·b modulo the CRC-32 polynomial, both in zlib's reflected bit order (zlib's multmodp)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


@cache
def _power(length: int) -> int:
    """x^(8·length) modulo the polynomial: what appending `length` bytes does to a CRC (zlib's x2nmodp)."""
    result, square, n = 1 << 31, 1 << 30, 8 * length  # x^0, x^1
    while n:
        if n & 1:
            result = _multiply(square, result)
        square = _multiply(square, square)
        n >>= 1
    return result


@cache
def _shift_tables(length: int) -> tuple[tuple[int, ...], ...]:
    """`_multiply(_power(length), crc)` for each byte of `crc`: four table lookups instead of 32 steps."""
    power = _power(length)
    return tuple(tuple(_multiply(power, value << (8 * byte)) for value in range(256)) for byte in range(4))


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """The CRC32 of A+B from CRC32(A), CRC32(B) and len(B) (zlib's crc32_combine, which Python lacks)."""
    if second_length == BLOCK_SIZE:
        t0, t1, t2, t3 = _shift_tables(BLOCK_SIZE)
        return t0[first & 255] ^ t1[(first >> 8) & 255] ^ t2[(first >> 16) & 255] ^ t3[first >> 24] ^ second
    return _multiply(_power(second_length), first) ^ second


def deflate_block(block: bytes, window: bytes, last: bool, level: int = LEVEL) -> tuple[bytes, int]:
    """One block as raw deflate, primed with `window` (the input just before it), and its CRC32."""
    if window:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, window)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = compressor.compress(block) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return out, zlib.crc32(block)


@cache
def _zero_block(level: int) -> tuple[bytes, int]:
    return deflate_block(_ZERO_BLOCK, _ZERO_WINDOW, False, level)


class ParallelGzip:
    """A gzip member written to `emit` in order as its input comes (`write`, `write_zeros`), `close()` ending it.

    `jobs` threads compress (1: in the caller's thread); the output does not depend on it.
    """

    def __init__(self, emit: Callable[[bytes], None], jobs: int = 1, level: int = LEVEL) -> None:
        self._emit, self._level = emit, level
        self._pool = ThreadPoolExecutor(jobs, thread_name_prefix="cdisk-gzip") if jobs > 1 else None
        self._limit = 4 * jobs  # blocks in flight: enough to keep every thread busy while the caller reads
        self._pending: deque[tuple[Future[tuple[bytes, int]] | tuple[bytes, int], int]] = deque()
        self._buffer = bytearray()  # the input not yet a whole block
        self._window = b""  # the last WINDOW bytes of the input before `_buffer`
        self._out = bytearray(HEADER)
        self._crc = 0
        self._size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        if self._buffer:
            take = BLOCK_SIZE - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) < BLOCK_SIZE:
                return
            self._block(bytes(self._buffer))
            self._buffer.clear()
        while len(view) >= BLOCK_SIZE:
            self._block(bytes(view[:BLOCK_SIZE]))
            view = view[BLOCK_SIZE:]
        self._buffer += view

    def write_zeros(self, length: int) -> None:
        """`length` zero bytes: whole zero blocks after a zero window are not compressed again."""
        if self._buffer:
            take = min(length, BLOCK_SIZE - len(self._buffer))
            self.write(_ZERO_BLOCK[:take])
            length -= take
        while length >= BLOCK_SIZE:
            self._block(_ZERO_BLOCK)
            length -= BLOCK_SIZE
        if length:
            self.write(_ZERO_BLOCK[:length])

    def _block(self, block: bytes, last: bool = False) -> None:
        window = self._window
        self._window = block[-WINDOW:] if len(block) >= WINDOW else (window + block)[-WINDOW:]
        self._size += len(block)
        job: Future[tuple[bytes, int]] | tuple[bytes, int]
        if not last and len(block) == BLOCK_SIZE and window == _ZERO_WINDOW and block == _ZERO_BLOCK:
            job = _zero_block(self._level)
        elif self._pool is None:
            job = deflate_block(block, window, last, self._level)
        else:
            job = self._pool.submit(deflate_block, block, window, last, self._level)
        self._pending.append((job, len(block)))
        while self._pending and (len(self._pending) > self._limit or _ready(self._pending[0][0])):
            self._collect()

    def _collect(self) -> None:
        job, length = self._pending.popleft()
        out, crc = job.result() if isinstance(job, Future) else job
        self._crc = crc32_combine(self._crc, crc, length)
        self._out += out
        if len(self._out) >= _EMIT:
            self._emit(bytes(self._out))
            self._out.clear()

    def close(self) -> None:
        """The last block (what is left, maybe nothing), then the CRC and size: the member is complete."""
        try:
            self._block(bytes(self._buffer), last=True)
            self._buffer.clear()
            while self._pending:
                self._collect()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        self._out += struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        self._emit(bytes(self._out))
        self._out.clear()

    def abandon(self) -> None:
        """Stop the threads without finishing the member (the write failed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _ready(job: Future[tuple[bytes, int]] | tuple[bytes, int]) -> bool:
    return not isinstance(job, Future) or job.done()
