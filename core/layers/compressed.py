"""A compressed layer read in one pass: its members indexed as the engine unpacks them, and the files that may
be the disk copied out, sparse, as the stream goes by — the layer is decompressed once and never held.

Which files are copied is a guess made before the image's tree is known (`Wanted`: the files directly under
/disk/, or the one --path names). When the disk turns out to be another file (a symlink or hard link to it
from /disk/), its layer is read once more for it alone: slower, never wrong.

A copy lives in an anonymous file (`O_TMPFILE`) in the temp dir: nothing to remove, however the run ends.
All-zero 4 KiB blocks are left as holes, as `qemu-img convert` leaves them; the file is as long as the
member rounded up to whole sectors (qemu reads a raw disk in sectors, as it reads a member of a plain tar).
"""

from __future__ import annotations

import errno
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from cdisk.core.disk.wanted import COPIES, DISK_DIR, Wanted
from cdisk.core.errors import LayerRefused, TargetError, UnsafeImageError
from cdisk.core.layers.decompressor import CHUNK, Decompressed
from cdisk.core.layers.unpack import disk_layer, members_from_tar
from cdisk.core.oci.blob import LayerBlob, own_fd
from cdisk.core.paths import go_clean
from cdisk.core.progress import Progress
from cdisk.core.tar_headers import BLOCK, REGULAR, TarEntry, read_entries, starts_a_tar
from cdisk.core.tree.merged import LayerMember

SPARSE_BLOCK = 4096
# Writes of 128 KiB: 7× faster than of 1 MiB into the page cache here (1.4 GiB: 0.25 s against 1.9 s), as the
# copy then runs from the CPU's cache.
WRITE = 128 << 10
SECTOR = 512
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_BLOCK = bytes(SPARSE_BLOCK)


@dataclass
class Copy:
    """A member copied out: `fd` holds it (its head only unless `complete`); `linkable`: made with O_TMPFILE,
    so it can be given a name.
    """

    fd: int
    complete: bool
    linkable: bool


@dataclass
class DecompressedLayer:
    """One compressed layer read: its members, and the copies made of some of them, by data offset."""

    members: list[LayerMember]
    copies: dict[int, Copy] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)  # the cleaned path of each copy, by data offset

    def close(self) -> None:
        for copy in self.copies.values():
            os.close(copy.fd)
        self.copies.clear()


def read_compressed(blob: LayerBlob, layer: int, kind: str, wanted: Wanted, directory: str,
                    progress: Progress, disk_name: str | None = None, room: int = COPIES,
                    replaces: frozenset[str] = frozenset()) -> DecompressedLayer:
    """Read the layer once, to its stream's end, copying the `wanted` members into anonymous files in
    `directory` — at most `room` of them at a time, besides those of a path in `replaces` (an earlier layer's
    copy, which this one's replaces; a later file of the same path in this layer replaces its copy too). The
    copies belong to the caller (`DecompressedLayer.close`).

    `disk_name`: the layer is a disk artifact's, which is the disk itself unless it starts as a tar does; then it
    is the one file /disk/`disk_name`, copied whole (its head only, when `wanted` has a limit).

    Raises:
        UnsafeImageError: the layer is refused, corrupt or cut short.
        TargetError: `directory` cannot hold the copies.
    """
    stream = Decompressed(blob, kind, progress)
    if disk_name is not None and not starts_a_tar(stream.peek(BLOCK)):
        if not (0 in wanted.offsets or (room > 0 and wanted.path(f"{DISK_DIR}/{disk_name}"))):
            size = stream.drain()
            stream.verify()
            return DecompressedLayer(disk_layer(disk_name, layer, size))
        copy, size = _copy(stream, None, wanted.limit, directory, blob)
        try:
            stream.verify()
        except BaseException:
            os.close(copy.fd)
            raise
        return DecompressedLayer(disk_layer(disk_name, layer, size), {0: copy})
    read = DecompressedLayer([])
    by_path: dict[str, int] = {}

    def copying() -> Iterator[TarEntry]:
        for entry in read_entries(stream, None):
            yield entry
            # Between two entries the stream stands at this one's data: copy it now or never.
            if entry.type != REGULAR or entry.sparse:
                continue
            path = go_clean("/" + entry.name).lstrip("/")
            if entry.data_offset not in wanted.offsets and not wanted.path(path):
                continue
            replaced = by_path.pop(path, None)
            if replaced is not None and replaced not in wanted.offsets:
                os.close(read.copies.pop(replaced).fd)  # a later entry replaces it in this layer
            # Past `room`, a file that is the disk after all is read in a second pass (which asks by offset).
            if entry.data_offset in wanted.offsets or len(read.copies) < room or path in replaces:
                read.copies[entry.data_offset] = _copy(stream, entry.size, wanted.limit, directory, blob)[0]
                by_path[path] = entry.data_offset
                read.paths[entry.data_offset] = path

    try:
        read.members = members_from_tar(copying(), layer)
        stream.drain()
        stream.verify()
    except LayerRefused as error:
        read.close()
        raise UnsafeImageError(f"layer {blob.short} is refused: {error.what} at byte {error.offset} of its "
                               f"uncompressed tar; {LayerRefused.ADVICE}") from None
    except BaseException:
        read.close()
        raise
    return read


def anonymous_file(directory: str) -> tuple[int, bool]:
    """An open file in `directory` that has no name: it vanishes when closed, however the run ends; and whether
    it can be given one (O_TMPFILE).
    """
    try:
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), True
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        # A filesystem without O_TMPFILE: a named file, unlinked at once.
        fd, path = tempfile.mkstemp(prefix=".cdisk-layer-", dir=directory)
        os.unlink(path)
        return fd, False
    except OSError as error:
        raise TargetError(f"cannot make a temp file in {directory}: {error.strerror}; pass --tmpdir with a "
                          "writable directory") from None


def _copy(stream: Decompressed, size: int | None, limit: int | None, directory: str, blob: LayerBlob,
          ) -> tuple[Copy, int]:
    """The next `size` bytes of the stream (None: all that is left) copied into an anonymous file, at most
    `limit` of them (the rest is read, not kept); and how many there were.
    """
    fd, linkable = anonymous_file(directory)
    try:
        done = 0
        writer = _SparseWriter(fd)
        try:
            while size is None or done < size:
                data = stream.read(CHUNK if size is None else min(CHUNK, size - done))
                if not data:
                    if size is None:
                        break
                    raise LayerRefused("the layer ends inside a member's data", stream.position)
                if limit is None or done < limit:
                    writer.write(data if limit is None else data[:limit - done], done)
                done += len(data)
        finally:
            failed = writer.finish()
        if failed is not None:
            raise failed
        kept = done if limit is None else min(done, limit)
        os.ftruncate(fd, -(-kept // SECTOR) * SECTOR)
        # What qemu-img gets is read-only, and never one of the standard streams a child's stdio replaces.
        read_only = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            held = own_fd(read_only)
        finally:
            os.close(read_only)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TargetError(f"{directory} ran out of space while decompressing layer {blob.short}; free some "
                              "space or pass --tmpdir on a larger filesystem (nothing was left behind)") from None
        raise TargetError(f"cannot write a temp file in {directory}: {error.strerror}; pass --tmpdir with a "
                          "writable directory") from None
    finally:
        os.close(fd)
    return Copy(held, kept == done, linkable), done


class _SparseWriter:
    """Writes chunks, sparse, in a thread of its own, so that writing overlaps decompressing (as zstd's own
    asynchronous output does). At most `QUEUED` chunks wait, so memory stays bounded; the first write error
    stops the writing and is kept.
    """

    QUEUED = 4

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None
        self.queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(self.QUEUED)
        self.thread = threading.Thread(target=self._run, name="cdisk-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    _write_sparse(self.fd, *item)
                except OSError as error:
                    self.error = error

    def write(self, data: bytes, at: int) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((data, at))

    def finish(self) -> OSError | None:
        """Wait for what is queued to be written; the error that stopped the writing, if one did."""
        self.queue.put(None)
        self.thread.join()
        return self.error


def _write_sparse(fd: int, data: bytes, at: int) -> None:
    """Write `data` at `at`, leaving every all-zero 4 KiB block (counted from the file's start) a hole."""
    if len(data) == CHUNK and data == _ZERO_CHUNK:
        return
    view = memoryview(data)
    start = -1  # where the pending run of non-zero blocks starts
    for offset in range(0, len(data), SPARSE_BLOCK):
        zero = data.startswith(_ZERO_BLOCK if offset + SPARSE_BLOCK <= len(data) else bytes(len(data) - offset),
                               offset)
        if zero and start >= 0:
            _pwrite_all(fd, view[start:offset], at + start)
            start = -1
        elif not zero and start < 0:
            start = offset
    if start >= 0:
        _pwrite_all(fd, view[start:], at + start)


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    while data:
        written = os.pwrite(fd, data[:WRITE], at)
        data, at = data[written:], at + written
