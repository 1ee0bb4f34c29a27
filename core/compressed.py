"""A compressed layer (gzip or zstd) read as a stream: decompressed once, forward only, in bounded pieces.

The compressed bytes are read through the layer's descriptor (`os.pread`), never a path; what comes out is
handed over at most `CHUNK` bytes at a time, so memory stays bounded whatever the layer expands to. A stream
cut short, a checksum that fails or bytes after the end that are not another gzip member or zstd frame are
one error each (Go's readers, which podman and docker unpack with, fail on all of them too).
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import TYPE_CHECKING

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

from cdisk.core.errors import ImageError, UnsafeImageError
from cdisk.core.progress import Progress

if TYPE_CHECKING:
    from cdisk.core.saved_layers import LayerBlob

# How much is decompressed per read: large enough that Python's per-call cost vanishes, small enough to hold.
CHUNK = 1048576
# The largest zstd window (2^25 = 32 MiB) cdisk accepts: the decoder holds one window, and a run must stay
# under 80 MiB. zstd levels 1-19 and podman's, skopeo's and docker's zstd writers use at most 8 MiB; only
# `--long` or `--ultra` go beyond.
ZSTD_WINDOW_LOG = 25
READABLE = ("gzip", "zstd")


class _Input:
    """The `size` compressed bytes at `offset` of open file `fd`, handed out `CHUNK` at a time; reports how far
    it got."""

    def __init__(self, fd: int, offset: int, size: int, progress: Progress) -> None:
        self.fd, self.offset, self.size, self.done, self.progress = fd, offset, size, 0, progress

    def __call__(self) -> bytes:
        data = os.pread(self.fd, min(CHUNK, self.size - self.done), self.offset + self.done)
        self.done += len(data)
        self.progress.update(self.done, self.size)
        return data


class _GzipMembers:
    """Go's gzip reader (multistream): one member after another, each checked against its CRC and length, up to
    the end of the input — anything after a member that is not another member (zeros too) is an error.
    """

    def __init__(self, source: _Input) -> None:
        self.source, self.decoder, self.data = source, zlib.decompressobj(16 + zlib.MAX_WBITS), b""

    def read(self, length: int) -> bytes:
        while True:
            if self.decoder.eof:
                rest = self.decoder.unused_data or self.source()
                if not rest:
                    return b""
                self.decoder, self.data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            if not self.data:
                self.data = self.source()
                if not self.data:
                    raise EOFError
            out = self.decoder.decompress(self.data, length)
            self.data = self.decoder.unconsumed_tail
            if out:
                return out


class _ZstdFrames:
    """Go's zstd reader: one frame after another (skippable ones included) up to the end of the input; a frame
    whose window exceeds `ZSTD_WINDOW_LOG` is refused before anything is allocated for it.
    """

    def __init__(self, source: _Input) -> None:
        self.source, self.data = source, b""
        self.decoder = self._decoder()

    @staticmethod
    def _decoder() -> zstd.ZstdDecompressor:
        return zstd.ZstdDecompressor(options={int(zstd.DecompressionParameter.window_log_max): ZSTD_WINDOW_LOG})

    def read(self, length: int) -> bytes:
        while True:
            if self.decoder.eof:
                rest = self.decoder.unused_data or self.data or self.source()
                if not rest:
                    return b""
                self.decoder, self.data = self._decoder(), rest
            if self.decoder.needs_input:
                feed, self.data = self.data or self.source(), b""
                if not feed:
                    raise EOFError
            else:
                feed = b""
            out = self.decoder.decompress(feed, length)
            if out:
                return out


class Decompressed:
    """The uncompressed bytes of one compressed layer, read forward only (a `tar_headers.Stream`)."""

    def __init__(self, blob: LayerBlob, kind: str, progress: Progress) -> None:
        if kind not in READABLE:
            raise UnsafeImageError(f"layer {blob.short} is {kind}-compressed, which image layers are not (cdisk "
                                   "reads gzip and zstd); recompress it with gzip or zstd")
        self.blob, self.kind, self.position = blob, kind, 0
        self._pending = b""
        assert blob.fd is not None, "a compressed layer is read through its descriptor"
        source = _Input(blob.fd, blob.offset, blob.size, progress)
        self._frames = _GzipMembers(source) if kind == "gzip" else _ZstdFrames(source)

    def _next(self, length: int) -> bytes:
        try:
            return self._frames.read(length)
        except EOFError:
            raise UnsafeImageError(f"layer {self.blob.short}'s {self.kind} stream is cut short; save or pull the "
                                   "image again") from None
        except zlib.error as error:
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

    def drain(self) -> None:
        """Read what follows the tar's end, so that the stream's own end (its checksums) is checked too."""
        self._pending = b""
        while self._next(CHUNK):
            pass
