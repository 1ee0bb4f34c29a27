"""The one layer of a containerDisk: `disk/` (0555) and `disk/disk.img` (0444), owned 107:107 (qemu), written as
Go's archive/tar writes ustar headers (a PAX size record past 8 GiB), with a fixed mtime and nothing of the host.

The disk is read once; holes of a sparse disk are not read at all (SEEK_DATA), only hashed and compressed as
the zeros they are, and an uncompressed layer keeps them as holes. The stream is hashed twice on the way (the
diff ID of the tar, the digest of the blob).
"""

from __future__ import annotations

import errno
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


def _pieces(fd: int, size: int) -> Iterator[bytes | int]:
    """The disk's bytes in order: data as bytes, holes as their length (never read).

    Raises:
        DiskChanged: the file is no longer `size` bytes long.
    """
    offset = 0
    while offset < size:
        data, hole = data_at(fd, offset, size)
        if data > offset:
            yield data - offset
            offset = data
            continue
        while offset < hole:
            chunk = os.pread(fd, min(CHUNK, hole - offset), offset)
            if not chunk:
                raise DiskChanged(offset, size)
            yield chunk
            offset += len(chunk)
    if os.fstat(fd).st_size != size:
        raise DiskChanged(os.fstat(fd).st_size, size)


class _Blob:
    """Where the layer goes: hashed as a tar, compressed, hashed again, written to `out` (holes kept as holes
    when nothing compresses them)."""

    def __init__(self, out: int, compression: str) -> None:
        self._out = out
        self._tar = hashlib.sha256()
        self._blob = hashlib.sha256()
        self._size = 0
        self._pending_hole = 0
        self.compression = compression
        self._compress: Callable[[bytes], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        if compression == "gzip":
            # zlib's gzip header has mtime 0 and no name: the same bytes every time.
            gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            self._compress, self._flush = gzip.compress, gzip.flush
        elif compression == "zstd":
            from cdisk.core.layers.decompressor import zstd

            writer = zstd.ZstdCompressor(level=ZSTD_LEVEL)
            self._compress, self._flush = writer.compress, writer.flush

    def add(self, data: bytes) -> None:
        self._tar.update(data)
        self._emit(data if self._compress is None else self._compress(data))

    def add_zeros(self, length: int) -> None:
        while length:
            step = min(length, CHUNK)
            zeros = _ZEROS if step == CHUNK else _ZEROS[:step]
            self._tar.update(zeros)
            if self._compress is None:
                self._pending_hole += step
                self._blob.update(zeros)
                self._size += step
            else:
                self._emit(self._compress(zeros))
            length -= step

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._pending_hole:
            os.lseek(self._out, self._pending_hole, os.SEEK_CUR)
            self._pending_hole = 0
        self._blob.update(data)
        self._size += len(data)
        write_all(self._out, data)

    def close(self) -> Layer:
        if self._flush is not None:
            self._emit(self._flush())
        if self._pending_hole:
            os.ftruncate(self._out, os.lseek(self._out, self._pending_hole, os.SEEK_CUR))
        return Layer("sha256:" + self._blob.hexdigest(), self._size, "sha256:" + self._tar.hexdigest(),
                     LAYER_TYPES[self.compression])


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_layer(disk_fd: int, size: int, out: int, compression: str, mtime: int,
                progress: Callable[[int], None] = lambda done: None) -> Layer:
    """The containerDisk layer holding the `size` bytes of `disk_fd` as /disk/disk.img, written to `out` (a new
    file, at its start) compressed as asked ("none", "gzip", "zstd")."""
    blob = _Blob(out, compression)
    blob.add(headers(size, mtime))
    done = 0
    for piece in _pieces(disk_fd, size):
        if isinstance(piece, int):
            blob.add_zeros(piece)
            done += piece
        else:
            blob.add(piece)
            done += len(piece)
        progress(done)
    blob.add(trailer(size))
    return blob.close()
