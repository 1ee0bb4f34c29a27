"""The one layer of a containerDisk: `disk/` (0555) and `disk/disk.img` (0444), owned 107:107 (qemu), written as
Go's archive/tar writes ustar headers (a PAX size record past 8 GiB), with a fixed mtime and nothing of the host.

The disk is read once; holes of a sparse disk are not read at all (SEEK_DATA), only hashed and compressed as
the zeros they are, and an uncompressed layer keeps them as holes. The stream is hashed twice on the way (the
diff ID of the tar, the digest of the blob; once when they are the same bytes). gzip and zstd compress on every
core and write the same bytes whatever the number (`parallel_gzip`; zstd's workers). Uncompressed, on a file
system that clones (XFS, btrfs), the disk's blocks are shared into the layer rather than written (`clone`).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cdisk.core.commands.build import clone
from cdisk.core.commands.build.parallel_gzip import ParallelGzip, default_jobs
from cdisk.core.errors import DiskChanged
from cdisk.core.oci.media_types import LAYER_TYPES

BLOCK = 512
QEMU_ID = 107
QEMU_NAME = "qemu"
DISK_DIR = "disk/"
DISK_NAME = "disk/disk.img"
# What fits the ustar size field (11 octal digits); larger sizes go into a PAX record, as Go writes them.
USTAR_MAX_SIZE = 0o77777777777
CHUNK = 1 << 20
# Where the disk's data start in the layer (and a layer's in an archive): on a block of any common file system,
# so one that clones (XFS, btrfs) can share the disk's blocks with a target file (`cdisk convert`'s reflink of
# a tar member). Go's writer would put them at byte 1024, as podman and docker do.
DATA_ALIGNMENT = 4096
_COMMENT = "cdisk: the disk's data start on a 4 KiB block, so a file system can share them"
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
# zstd's workers at most (level 3 runs at hundreds of MB/s each: more only take memory).
ZSTD_MAX_WORKERS = 8
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class Layer:
    """A written layer blob: its digest and size as stored, and the diff ID (digest of the tar itself)."""

    digest: str
    size: int
    diff_id: str
    media_type: str


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def ustar_header(name: str, typeflag: bytes, mode: int, size: int, mtime: int, owner: int = 0,
                 owner_name: str = "") -> bytes:
    """One 512-byte ustar header as Go's archive/tar writes it; a size past the ustar field is left 0 there (a
    PAX record before it carries it: `member_headers`)."""
    block = bytearray(BLOCK)

    def put(offset: int, field: bytes) -> None:
        block[offset:offset + len(field)] = field

    put(0, name.encode())
    put(100, _octal(mode, 8))
    put(108, _octal(owner, 8))
    put(116, _octal(owner, 8))
    put(124, _octal(size if size <= USTAR_MAX_SIZE else 0, 12))
    put(136, _octal(mtime, 12))
    put(148, b" " * 8)
    put(156, typeflag)
    put(257, b"ustar\x0000")
    put(265, owner_name.encode())
    put(297, owner_name.encode())
    put(329, _octal(0, 8))
    put(337, _octal(0, 8))
    put(148, f"{sum(block):06o}".encode() + b"\0 ")
    assert len(block) == BLOCK
    return bytes(block)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return f"{length}{body}".encode()


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def member_headers(name: str, mode: int, size: int, mtime: int, owner: int = 0, owner_name: str = "",
                   at: int | None = None) -> bytes:
    """The headers of a regular file: a PAX `size` record first when the size does not fit ustar (as Go writes
    it: a plain `x` header named DIR/PaxHeaders.0/NAME). `at`: where the headers go in the tar, when the
    member's data must start on a `DATA_ALIGNMENT` boundary — a PAX `comment` record (which every reader
    ignores) pads the headers to it."""
    records = _pax_record("size", str(size)) if size > USTAR_MAX_SIZE else b""
    if at is not None:
        records = _aligning_comment(at, records) + records  # Go writes the records sorted by key
    out = b""
    if records:
        directory, _, base = name.rpartition("/")
        pax_name = f"{directory}/PaxHeaders.0/{base}" if directory else f"PaxHeaders.0/{base}"
        out = ustar_header(pax_name, b"x", 0, len(records), 0) + records + _padding(len(records))
    return out + ustar_header(name, b"0", mode, size, mtime, owner, owner_name)


def _aligning_comment(at: int, records: bytes) -> bytes:
    """A PAX comment record that, with `records`, fills a PAX header starting at `at` so that the data of the
    member after it start on a `DATA_ALIGNMENT` boundary."""
    assert at % BLOCK == 0, "a member starts on a tar block"
    least = len(records) + len(_pax_record("comment", _COMMENT))
    room = -(-least // BLOCK) * BLOCK
    while (at + BLOCK + room + BLOCK) % DATA_ALIGNMENT:
        room += BLOCK
    fill = room - least
    while len(record := _pax_record("comment", _COMMENT + " " * fill)) + len(records) > room:
        fill -= 1
    return record


def headers(size: int, mtime: int) -> bytes:
    """Everything of the layer's tar before the disk's bytes (ending on a `DATA_ALIGNMENT` boundary)."""
    return ustar_header(DISK_DIR, b"5", 0o555, 0, mtime, QEMU_ID, QEMU_NAME) + \
        member_headers(DISK_NAME, 0o444, size, mtime, QEMU_ID, QEMU_NAME, at=BLOCK)


def trailer(size: int) -> bytes:
    """Everything of the tar after the disk's bytes: its padding, then the two zero blocks of the end."""
    return _padding(size) + bytes(2 * BLOCK)


def data_at(fd: int, offset: int, size: int) -> tuple[int, int]:
    """Where the next data starts from `offset`, and where that data ends (`size` when the file system cannot
    say: then everything is read)."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as error:
        if error.errno != errno.ENXIO:
            return offset, size  # no SEEK_DATA here: read it all
        data = size  # only a hole from here on, if the file still is that long (checked by the caller)
    data = min(data, size)
    try:
        hole = os.lseek(fd, data, os.SEEK_HOLE) if data < size else size
    except OSError:
        hole = size
    return data, min(hole, size)


def _pieces(fd: int, start: int, end: int) -> Iterator[bytes | int]:
    """The bytes [start, end) of `fd` in order: data as bytes, holes as their length (never read).

    Raises:
        DiskChanged: the file ended before `end`.
    """
    offset = start
    while offset < end:
        data, hole = data_at(fd, offset, end)
        if data > offset:
            yield data - offset
            offset = data
            continue
        while offset < hole:
            chunk = os.pread(fd, min(CHUNK, hole - offset), offset)
            if not chunk:
                raise DiskChanged(offset, end)
            yield chunk
            offset += len(chunk)


def _unchanged(fd: int, size: int) -> None:
    """Raises DiskChanged: the disk is no longer `size` bytes long."""
    if (now := os.fstat(fd).st_size) != size:
        raise DiskChanged(now, size)


class _Blob:
    """Where the layer goes: hashed as a tar, compressed, hashed again (an uncompressed layer once: its blob is
    its tar), written to `out` (holes kept as holes when nothing compresses them)."""

    def __init__(self, out: int, compression: str, jobs: int) -> None:
        self._out = out
        self._tar = hashlib.sha256()
        self._blob = self._tar if compression == "none" else hashlib.sha256()
        self._size = 0
        self._skip = 0  # bytes of `out` to pass over before the next write: a hole, or data already there
        self.compression = compression
        self._gzip: ParallelGzip | None = None
        self._zstd: Any = None
        if compression == "gzip":
            self._gzip = ParallelGzip(self._emit, jobs, GZIP_LEVEL)
        elif compression == "zstd":
            from cdisk.core.layers.decompressor import zstd

            # Multithreaded zstd writes the same frame for any number of workers from 1 up (not for 0, the
            # single-threaded mode): its jobs are cut by size, not by thread. Each worker holds about 20 MiB.
            workers = max(1, min(jobs, ZSTD_MAX_WORKERS))
            self._zstd = zstd.ZstdCompressor(options={zstd.CompressionParameter.compression_level: ZSTD_LEVEL,
                                                      zstd.CompressionParameter.nb_workers: workers})

    @property
    def position(self) -> int:
        """Where the next byte of the blob goes in `out` (of an uncompressed layer: of the tar too)."""
        return self._size

    def add(self, data: bytes) -> None:
        if self._gzip is not None:
            self._tar.update(data)
            self._gzip.write(data)
        elif self._zstd is not None:
            self._tar.update(data)
            self._emit(self._zstd.compress(data))
        else:
            self._emit(data)

    def add_present(self, data: bytes) -> None:
        """Bytes of an uncompressed layer already in `out` where they go (cloned there): hashed, not written."""
        assert self.compression == "none"
        self._tar.update(data)
        self._size += len(data)
        self._skip += len(data)

    def add_zeros(self, length: int) -> None:
        if self._gzip is not None:
            self._gzip.write_zeros(length)
        while length:
            step = min(length, CHUNK)
            zeros = _ZEROS if step == CHUNK else _ZEROS[:step]
            self._tar.update(zeros)
            if self._zstd is not None:
                self._emit(self._zstd.compress(zeros))
            elif self._gzip is None:
                self._skip += step
                self._size += step
            length -= step

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._skip:
            os.lseek(self._out, self._skip, os.SEEK_CUR)
            self._skip = 0
        self._blob.update(data)
        self._size += len(data)
        write_all(self._out, data)

    def close(self) -> Layer:
        if self._gzip is not None:
            self._gzip.close()
        elif self._zstd is not None:
            self._emit(self._zstd.flush())
        if self._skip:
            os.ftruncate(self._out, os.lseek(self._out, self._skip, os.SEEK_CUR))
            self._skip = 0
        return Layer("sha256:" + self._blob.hexdigest(), self._size, "sha256:" + self._tar.hexdigest(),
                     LAYER_TYPES[self.compression])

    def abandon(self) -> None:
        if self._gzip is not None:
            self._gzip.abandon()


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_layer(disk_fd: int, size: int, out: int, compression: str, mtime: int,
                progress: Callable[[int], None] = lambda done: None, jobs: int | None = None) -> Layer:
    """The containerDisk layer holding the `size` bytes of `disk_fd` as /disk/disk.img, written to `out` (a new
    file, at its start) compressed as asked ("none", "gzip", "zstd") on `jobs` threads (default: every core;
    the bytes do not depend on it).

    Uncompressed, the disk's whole blocks are cloned into `out` where the file system can (`clone`): then the
    layer's bytes are read back to be hashed, and none is written.

    Raises:
        DiskChanged: the disk's length changed while it was read.
    """
    blob = _Blob(out, compression, default_jobs() if jobs is None else jobs)
    try:
        blob.add(headers(size, mtime))
        done = 0
        if compression == "none":
            done = _add_cloned(blob, disk_fd, size, out, progress)
        for piece in _pieces(disk_fd, done, size):
            if isinstance(piece, int):
                blob.add_zeros(piece)
                done += piece
            else:
                blob.add(piece)
                done += len(piece)
            progress(done)
        _unchanged(disk_fd, size)
        blob.add(trailer(size))
        return blob.close()
    finally:
        blob.abandon()


def _add_cloned(blob: _Blob, disk_fd: int, size: int, out: int, progress: Callable[[int], None]) -> int:
    """Clone the disk's whole blocks into `out` at its position and hash them as the layer holds them (read back
    from `out`: what is hashed is what the layer holds); how many bytes of the disk that was (0: not cloned)."""
    at = blob.position
    cloned = clone.clone_blocks(disk_fd, size, out, at)
    if not cloned:
        return 0
    try:
        reader = os.open(f"/proc/self/fd/{out}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.ftruncate(out, at)  # cannot read it back to hash it: written as ever instead
        return 0
    try:
        _unchanged(disk_fd, size)
        for piece in _pieces(reader, at, at + cloned):
            if isinstance(piece, int):
                blob.add_zeros(piece)
            else:
                blob.add_present(piece)
            progress(blob.position - at)
    finally:
        os.close(reader)
    return cloned
