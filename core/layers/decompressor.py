"""A compressed layer (gzip or zstd) read as a stream: decompressed once, forward only, in bounded pieces.

The compressed bytes are read through the layer's descriptor (`os.pread`), never a path; what comes out is
handed over at most `CHUNK` bytes at a time, so memory stays bounded whatever the layer expands to. A stream
cut short, a checksum that fails or bytes after the end that are not another gzip member or zstd frame are
one error each (Go's readers, which podman and docker unpack with, fail on all of them too).
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import zlib
from typing import Any

if sys.version_info >= (3, 14):
    from compression import zstd as zstd
else:
    from backports import zstd as zstd

from cdisk.core.errors import ImageError, UnsafeImageError
from cdisk.core.layers import digests
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.progress import Progress

# How much is decompressed per read: large enough that Python's per-call cost vanishes, small enough to hold.
CHUNK = 1 << 20
# The largest zstd window (2^25 = 32 MiB) cdisk accepts: the decoder holds one window, and a run must stay
# under 80 MiB. zstd levels 1-19 and podman's, skopeo's and docker's zstd writers use at most 8 MiB; only
# `--long` or `--ultra` go beyond.
ZSTD_WINDOW_LOG = 25
READABLE = ("gzip", "zstd")


class _Input:
    """The `size` compressed bytes at `offset` of open file `fd`, read `CHUNK` at a time and handed to a decoder
    in pieces that start at `FEED` with each member or frame and double up to `CHUNK` within it: what a decoder
    leaves over at its end (and gives back as a copy) stays small however many tiny members or frames follow,
    and a large one is fed in large pieces (fewer calls, whole outputs); reports how far it got.
    """

    FEED = 16 << 10

    def __init__(self, fd: int, offset: int, size: int, progress: Progress, digest: Any = None) -> None:
        self.fd, self.offset, self.size, self.done, self.progress = fd, offset, size, 0, progress
        self.buffer, self.at = memoryview(b""), 0
        self.piece = self.FEED
        self.digest = digest  # a hash every byte read goes through, or None

    def ready(self, length: int = 1) -> bool:
        """Whether `length` more bytes are there to feed (read from the file as needed)."""
        while len(self.buffer) - self.at < length:
            data = os.pread(self.fd, min(CHUNK, self.size - self.done), self.offset + self.done)
            if not data:
                return False
            self.done += len(data)
            if self.digest is not None:
                self.digest.update(data)
            self.progress.update(self.done, self.size)
            self.buffer, self.at = memoryview(bytes(self.buffer[self.at:]) + data), 0
        return True

    def feed(self) -> memoryview:
        """The next bytes for a decoder (empty at the end)."""
        self.ready()
        piece = self.buffer[self.at:self.at + self.piece]
        self.at += len(piece)
        self.piece = min(CHUNK, self.piece * 2)
        return piece

    def new_frame(self) -> None:
        self.piece = self.FEED

    def give_back(self, length: int) -> None:
        """The last `length` bytes fed were not the decoder's: they are fed again (to the next one)."""
        self.at -= length

    def take(self, length: int) -> bytes:
        """The next `length` bytes, or fewer at the end."""
        self.ready(length)
        piece = bytes(self.buffer[self.at:self.at + length])
        self.at += len(piece)
        return piece


class _Frames:
    """Members (gzip) or frames (zstd) one after another up to the end of the input, as Go's readers take them:
    whatever follows one must be another. More than `MAX_FRAMES` in one layer is refused: each costs a decoder
    of its own, and a hostile stream of empty ones would otherwise cost an hour per GiB.
    """

    MAX_FRAMES = 1_000_000

    def __init__(self, source: _Input) -> None:
        self.source, self.frames = source, 0

    def started(self) -> None:
        self.source.new_frame()
        self.frames += 1
        if self.frames > self.MAX_FRAMES:
            raise ValueError(f"more than {self.MAX_FRAMES:,} members or frames in one layer")


class _GzipMembers(_Frames):
    """Go's gzip reader (compress/gzip, multistream), member by member: the header read as Go reads it (its
    reserved flag bits ignored; a name or comment of at most 511 bytes; FHCRC checked against the CRC of the
    first ten bytes alone, as Go checks it), the deflate stream inflated by zlib, the CRC-32 and length of the
    data checked against the trailer. zlib's own gzip reader differs from Go's on each of those points.
    """

    _ID, _DEFLATE = b"\x1f\x8b", 8
    _HCRC, _EXTRA, _NAME, _COMMENT = 1 << 1, 1 << 2, 1 << 3, 1 << 4
    _STRING_MAX = 512  # Go's header buffer: a string and its NUL within it

    def __init__(self, source: _Input) -> None:
        super().__init__(source)
        self.decoder: zlib._Decompress | None = None
        self.crc = self.size = 0

    def _exactly(self, length: int) -> bytes:
        data = self.source.take(length)
        if len(data) != length:
            raise EOFError
        return data

    def _string(self) -> None:
        source = self.source
        source.ready(self._STRING_MAX)  # as many as there are: a NUL within them, or a refusal
        end = bytes(source.buffer[source.at:source.at + self._STRING_MAX]).find(b"\0")
        if end < 0:
            if len(source.buffer) - source.at < self._STRING_MAX:
                raise EOFError  # cut inside the name or comment (Go ends a later member's stream there: refused)
            raise ValueError("invalid gzip header (a name or comment over 511 bytes)")
        source.take(end + 1)

    def _header(self) -> bool:
        """Read the next member's header; False at the end of the layer (no byte left)."""
        head = self.source.take(10)
        if not head and self.frames:
            return False
        if len(head) != 10:
            raise EOFError
        if head[:2] != self._ID or head[2] != self._DEFLATE:
            raise ValueError("invalid gzip header")
        self.started()
        flags = head[3]
        if flags & self._EXTRA:
            self._exactly(int.from_bytes(self._exactly(2), "little"))
        if flags & self._NAME:
            self._string()
        if flags & self._COMMENT:
            self._string()
        if flags & self._HCRC and int.from_bytes(self._exactly(2), "little") != zlib.crc32(head) & 0xFFFF:
            raise ValueError("invalid gzip header (header checksum)")
        self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        self.crc = self.size = 0
        return True

    def _trailer(self) -> None:
        assert self.decoder is not None
        self.source.give_back(len(self.decoder.unused_data))
        trailer = self._exactly(8)
        if int.from_bytes(trailer[:4], "little") != self.crc or \
                int.from_bytes(trailer[4:], "little") != self.size & 0xFFFFFFFF:
            raise ValueError("invalid checksum")
        self.decoder = None

    def read(self, length: int) -> bytes:
        while True:
            if self.decoder is not None and self.decoder.eof:
                self._trailer()
            if self.decoder is None and not self._header():
                return b""
            assert self.decoder is not None
            feed = self.source.feed()
            if not feed:
                raise EOFError
            out = self.decoder.decompress(feed, length)
            # At the deflate stream's end zlib may fill unconsumed_tail *and* unused_data with the same bytes
            # (what follows it): they are given back once, as unused_data, by `_trailer`.
            if not self.decoder.eof:
                self.source.give_back(len(self.decoder.unconsumed_tail))
            if out:
                self.crc = zlib.crc32(out, self.crc)
                self.size += len(out)
                return out


# A skippable zstd frame: magic 0x184D2A50-5F, a 4-byte length, that many bytes of anything (zstd:chunked's
# table of contents is one).
_SKIPPABLE_MAGIC, _SKIPPABLE_MASK = 0x184D2A50, 0xFFFFFFF0


class _ZstdFrames(_Frames):
    """Go's zstd reader: frames one after another, skippable ones skipped (with no decoder); a frame whose
    window exceeds `ZSTD_WINDOW_LOG` is refused before anything is allocated for it.
    """

    def __init__(self, source: _Input) -> None:
        super().__init__(source)
        self.decoder: zstd.ZstdDecompressor | None = None

    def _skipped(self) -> bool:
        """Whether a skippable frame came next (and was skipped)."""
        if not self.source.ready(8):
            return False
        head = bytes(self.source.buffer[self.source.at:self.source.at + 8])
        magic, length = struct.unpack("<II", head)
        if magic & _SKIPPABLE_MASK != _SKIPPABLE_MAGIC:
            return False
        self.started()
        self.source.take(8)
        while length:
            piece = self.source.take(min(length, CHUNK))
            if not piece:
                raise EOFError
            length -= len(piece)
        return True

    def read(self, length: int) -> bytes:
        while True:
            if self.decoder is None or self.decoder.eof:
                if self.decoder is not None:
                    self.source.give_back(len(self.decoder.unused_data))
                    self.decoder = None
                if self._skipped():
                    continue
                if not self.source.ready():
                    return b""
                self.started()
                self.decoder = zstd.ZstdDecompressor(
                    options={int(zstd.DecompressionParameter.window_log_max): ZSTD_WINDOW_LOG})
            if self.decoder.needs_input:
                feed = self.source.feed()
                if not feed:
                    raise EOFError
            else:
                feed = memoryview(b"")
            out = self.decoder.decompress(feed, length)
            if out:
                return out


@functools.cache
def _keep_freed_memory() -> None:
    """Have glibc keep freed memory in the heap. Each decompressed chunk is a new 1 MiB object: by default glibc
    maps it, or trims the heap when it is freed, and the kernel faults the pages in again for the next one —
    100,000 page faults and 0.18 s on a 4 GiB layer (1.46 → 1.28 s). What is live stays a few MiB.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its own allocator's ways
        pass


class Decompressed:
    """The uncompressed bytes of one compressed layer, read forward only (a `tar_headers.Stream`)."""

    def __init__(self, blob: LayerBlob, kind: str, progress: Progress) -> None:
        _keep_freed_memory()
        if kind not in READABLE:
            raise UnsafeImageError(f"layer {blob.short} is {kind}-compressed, which image layers are not (cdisk "
                                   "reads gzip and zstd); recompress it with gzip or zstd")
        self.blob, self.kind, self.position = blob, kind, 0
        self._pending = b""
        if blob.fd is None:
            raise TypeError("a compressed layer is read through the descriptor its blob holds")
        # A blob from outside is hashed as it is read: its stored bytes, or (a docker-archive's diff ID) the tar.
        self._stored = digests.hasher(blob) if blob.outside and not blob.tar_digest else None
        self._tar = digests.hasher(blob) if blob.outside and blob.tar_digest else None
        self._source = _Input(blob.fd, blob.offset, blob.size, progress, self._stored)
        self._frames = _GzipMembers(self._source) if kind == "gzip" else _ZstdFrames(self._source)

    def verify(self) -> None:
        """Once the stream was read to its end (`drain`): compare a blob from outside with its digest.

        Raises:
            ImageError: it does not hash to its digest.
        """
        if self._stored is not None:
            if self._source.done != self.blob.size:  # its stream ended before its bytes did
                raise ImageError(f"layer {self.blob.short} holds bytes past its compressed stream's end; save or "
                                 "pull the image again")
            digests.check(self.blob, self._stored.hexdigest())
        if self._tar is not None:
            digests.check(self.blob, self._tar.hexdigest())

    def _next(self, length: int) -> bytes:
        try:
            data = self._frames.read(length)
            if self._tar is not None:
                self._tar.update(data)
            return data
        except EOFError:
            raise UnsafeImageError(f"layer {self.blob.short}'s {self.kind} stream is cut short; save or pull the "
                                   "image again") from None
        except (zlib.error, ValueError) as error:
            raise self._corrupt(str(error)) from None
        except zstd.ZstdError as error:
            if "memory" in str(error).lower() or "window" in str(error).lower():
                raise UnsafeImageError(
                    f"layer {self.blob.short} is zstd-compressed with a window over {1 << ZSTD_WINDOW_LOG >> 20}"
                    " MiB (zstd --long or --ultra), more memory than cdisk gives a layer; recompress it "
                    "with zstd -19 or lower") from None
            raise self._corrupt(str(error)) from None
        except OSError as error:
            raise ImageError(f"cannot read layer {self.blob.short}: {error.strerror or error}; save or pull the "
                             "image again") from None

    def _corrupt(self, why: str) -> UnsafeImageError:
        return UnsafeImageError(f"layer {self.blob.short}'s {self.kind} stream is corrupt ({why}); save or pull "
                                "the image again")

    def read(self, length: int) -> bytes:
        """Up to `length` bytes (fewer only at the end), at most `CHUNK` held at once by the caller's choice."""
        parts = []
        if self._pending:
            parts.append(self._pending[:length])
            self._pending = self._pending[length:]
            length -= len(parts[0])
        while length > 0:
            data = self._next(min(length, CHUNK))
            if not data:
                break
            parts.append(data)
            length -= len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += len(data)
        return data

    def skip_to(self, position: int) -> bool:
        """Move forward to `position`, discarding what lies before it; False when the layer ends first."""
        while self.position < position:
            if not self.read(min(position - self.position, CHUNK)):
                return False
        return True

    def peek(self, length: int) -> bytes:
        """The next `length` bytes (fewer only at the end), left to be read."""
        while len(self._pending) < length:
            more = self._next(min(CHUNK, length - len(self._pending)))
            if not more:
                break
            self._pending += more
        return self._pending[:length]

    def at_end(self) -> bool:
        if not self._pending:
            self._pending = self._next(CHUNK)
        return not self._pending

    def drain(self) -> int:
        """Read what is left (after a tar's end: so that the stream's own end, its checksums, is checked too);
        where the stream ends."""
        end = self.position + len(self._pending)
        self._pending = b""
        while data := self._next(CHUNK):
            end += len(data)
        return end
