"""A layer of an engine's store put back together as the tar it was, from its tar-split and its files: hashed, it
is the layer's diff ID, as containers/storage and moby reassemble it for `podman save` / `docker save`.

The tar-split (github.com/vbatts/tar-split, `tar/storage/entry.go`) is gzip'd JSON, one entry a line: type 2, a
segment (`payload`: base64 of the tar's bytes between file contents, headers and padding included), or type 1, a
file (`name`, or `name_raw` in base64 where the name is no UTF-8; `size`; `payload`: the CRC-64 of its content,
Go's crc64.ISO table, big-endian). `tar/asm/assemble.go` writes the segments in order and, for each file of a
size above 0, the file read from the layer's directory (Go's `filepath.Join(diff, name)`), and fails with "file
integrity checksum failed for NAME" when its CRC-64 differs. Here the files are read exactly `size` bytes at a
time in 1 MiB reads, each opened one directory at a time without following a link; a layer whose diff ID
differs is read a second time for the CRC-64s, which name the file that changed (~300 MB/s in Python; paid only
for a layer already known to be damaged).
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import json
import os
import posixpath
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cdisk.core.errors import Denied, ImageError

CHUNK = 1 << 20
# A line of the tar-split is one entry: a segment holds headers (a PAX header with a long name, say), never a
# file's content; a longer line is no tar-split's (and 4 MiB of JSON decodes into at most a few hundred MiB).
MAX_LINE = 4 << 20
_SEGMENT, _FILE = 2, 1
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


_ALL = (1 << 64) - 1


def crc64_iso(data: bytes, crc: int = 0) -> int:
    """Go's `crc64.Update(crc, crc64.MakeTable(crc64.ISO), data)`, computed on the whole of `data` as one Python
    integer, not a byte at a time (~300 MB/s where a table loop makes 6).

    The reflected CRC is the remainder of M(x)·x^64 + I(x)·x^8n by P(x) = x^64 + x^4 + x^3 + x + 1 (ISO 3309), and
    `int.from_bytes(data, "little")` is M with its bits reversed: bit p stands for the term of degree W-1-p, W =
    8n + 64, and the register's init I its bits 0-63. P is sparse, and so is each x^(64s) ≡ (x^4 + x^3 + x + 1)^s
    = x^4s + x^3s + x^s + 1 for s a power of two (squaring is linear over GF(2)): the 60s terms of highest degree,
    moved down that way, fold onto the next 64s with four shifts and XORs, each fold halving what is left.
    """
    r = int.from_bytes(data, "little") ^ (crc ^ _ALL)
    width = 8 * len(data) + 64
    while width >= 124:
        s = 1 << ((width // 124).bit_length() - 1)  # 124s <= width: the folded terms all have degree >= 64s
        high = r & ((1 << 60 * s) - 1)
        r = (r >> 60 * s) ^ high ^ (high << s) ^ (high << 3 * s) ^ (high << 4 * s)
        width -= 60 * s
    c = width - 64  # fewer than 60 terms of degree >= 64 left
    high = r & ((1 << c) - 1)
    r = (r >> c) ^ ((high ^ (high << 1) ^ (high << 3) ^ (high << 4)) << (60 - c))
    return r ^ _ALL


@dataclass(frozen=True)
class FileEntry:
    """A file of the layer whose content the tar holds: its name in the tar, size, and CRC-64 (8 bytes)."""

    name: bytes
    size: int
    crc64: bytes

    @property
    def shown(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


def entries(tar_split: BinaryIO, label: str) -> Iterator[bytes | FileEntry]:
    """The tar-split's entries in order: a segment's bytes, or a file.

    Raises:
        ImageError: the tar-split cannot be read (not gzip, no JSON lines of its format).
    """
    try:
        with gzip.GzipFile(fileobj=tar_split, mode="rb") as lines:
            while line := lines.readline(MAX_LINE + 1):
                if len(line) > MAX_LINE:
                    raise ValueError("a line too long")
                yield _entry(json.loads(line))
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError, binascii.Error, RecursionError) as error:
        raise ImageError(f"{label} cannot be read ({_why(error)}); the store is damaged: remove the image and pull "
                         "it again") from error


def _why(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0][:80]


def _entry(record: object) -> bytes | FileEntry:
    if not isinstance(record, dict):
        raise ValueError("an entry is no JSON object")
    kind = record["type"]
    payload = base64.b64decode(record.get("payload") or "", validate=True)
    if kind == _SEGMENT:
        return payload
    if kind == _FILE:
        raw = record.get("name_raw")
        name = base64.b64decode(raw, validate=True) if raw else str(record.get("name") or "").encode()
        if b"\0" in name:
            raise ValueError("a file name holding a NUL byte")
        size = record.get("size") or 0
        if not isinstance(size, int) or size < 0:
            raise ValueError("a file of no size")
        return FileEntry(name, size, payload)
    raise ValueError(f"an entry of type {kind!r}")


def open_in(root_fd: int, name: bytes) -> int:
    """The regular file `name` below the directory `root_fd`, as Go's `filepath.Join(root, name)` names it (cleaned:
    what climbs above the root stays at it), opened one directory at a time without following a link.

    Raises:
        OSError: absent, or a link or anything but a regular file where the name leads.
    """
    parts = [part for part in posixpath.normpath(b"/" + name).split(b"/") if part]
    if not parts:
        raise OSError(errno.EISDIR, "not a file")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            below = os.open(part, _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        # O_PATH opens nothing (a device's open can have effects): judged by its descriptor, then opened for
        # reading through that very descriptor.
        judged = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        mode = os.fstat(judged).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symbolic link where a file should be")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.open(f"/proc/self/fd/{judged}", _REGULAR & ~os.O_NOFOLLOW)  # the magic link is the file judged
    finally:
        os.close(judged)


@dataclass(frozen=True)
class Reassembled:
    """The reassembled tar's sha256 (`sha256:…`), its size, and the files that could not be read as the tar-split
    says (absent, another size, not a regular file): name -> why."""

    diff_id: str
    size: int
    unreadable: dict[str, str]


def reassemble(tar_split: BinaryIO, root_fd: int, label: str, read: Callable[[int], None] = lambda _: None,
               ) -> Reassembled:
    """Hash the layer's tar as the tar-split and the layer directory `root_fd` make it up; `read(n)` is told of
    every n bytes of file content read (progress).

    Raises:
        ImageError: the tar-split cannot be read.
        Denied: a file of the layer may not be read by this process.
    """
    digest, size, unreadable = hashlib.sha256(), 0, {}
    for entry in entries(tar_split, label):
        if isinstance(entry, bytes):
            digest.update(entry)
            size += len(entry)
            continue
        if entry.size == 0:
            continue
        try:
            done = _stream(root_fd, entry, digest.update, read)
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EPERM):
                raise Denied(entry.shown, error.strerror or "permission denied") from None
            unreadable[entry.shown] = error.strerror or str(error)
            continue
        size += done
        if done != entry.size:
            unreadable[entry.shown] = f"{done} bytes where the layer's metadata says {entry.size}"
    return Reassembled("sha256:" + digest.hexdigest(), size, unreadable)


def _stream(root_fd: int, entry: FileEntry, sink: Callable[[bytes], object], read: Callable[[int], None]) -> int:
    """Feed `sink` the file's first `entry.size` bytes; how many there were (fewer: the file is shorter; one more
    is looked for: a longer file is no file of this size)."""
    fd = open_in(root_fd, entry.name)
    try:
        done = 0
        while done < entry.size:
            data = os.pread(fd, min(CHUNK, entry.size - done), done)
            if not data:
                return done
            sink(data)
            done += len(data)
            read(len(data))
        return done + len(os.pread(fd, 1, done))
    finally:
        os.close(fd)


def crc_mismatches(tar_split: BinaryIO, root_fd: int, label: str) -> list[str]:
    """The files of the layer whose content's CRC-64 is not the tar-split's (what tar-split's assembly would fail
    on: "file integrity checksum failed"), in the tar's order: a second read, for a layer known damaged.

    Raises:
        ImageError: the tar-split cannot be read.
    """
    bad = []
    for entry in entries(tar_split, label):
        if isinstance(entry, bytes) or entry.size == 0:
            continue
        crc = 0

        def update(data: bytes) -> None:
            nonlocal crc
            crc = crc64_iso(data, crc)

        try:
            done = _stream(root_fd, entry, update, lambda _: None)
        except OSError:
            bad.append(entry.shown)
            continue
        if done != entry.size or crc.to_bytes(8, "big") != entry.crc64:
            bad.append(entry.shown)
    return bad
