"""Layer blobs from outside vouched for by their digests, as skopeo and podman vouch for them: every byte hashed
beside its reading and compared before anything the blob held is published.

A file source's blob is read by qemu-img (a plain layer, a disk artifact) or by cdisk's own decompression pass (a
compressed layer). The first is hashed by a thread of its own while the command works (hashlib releases the GIL,
the pages read are shared with qemu-img's), the second in the pass itself. An attacker who can plant a file in a
layout (a hard link to a root-only file, say) cannot name the digest of bytes they cannot read.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading

from cdisk.core.errors import ImageError
from cdisk.core.oci.blob import LayerBlob

# What a hashing thread reads at once: large enough that the calls cost nothing, small enough to stop quickly.
CHUNK = 1 << 20
_SHA256 = "sha256:"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def hasher(blob: LayerBlob) -> hashlib._Hash:
    """A fresh hash of the algorithm `blob.digest` names.

    Raises:
        ImageError: a digest of another algorithm (cdisk checks sha256, as every engine writes).
    """
    if not _DIGEST.fullmatch(blob.digest):
        raise ImageError(f"a layer is named by {blob.digest[:80]!r}, not a sha256 digest cdisk can check;"
                         " save the image again")
    return hashlib.sha256()


def check(blob: LayerBlob, found: str) -> None:
    """Compare the hex digest `found` of the blob's bytes with the one it must have.

    Raises:
        ImageError: they differ.
    """
    if _SHA256 + found != blob.digest:
        raise ImageError(f"layer {blob.short} does not hash to its digest ({blob.digest} expected, "
                         f"{_SHA256}{found} found): the file was changed or damaged since it was written; save or "
                         "pull the image again")


class BlobChecks:
    """The blobs hashed one after another by one thread of its own from the moment they are given (each distinct
    byte range once: a manifest may name one blob 500 times); `verify` waits for it, compares, and checks that no
    file changed meanwhile (a layout's owner may still write a blob it owns: what was hashed must be what qemu-img
    read). `stop` ends it early (the command ended first); the blobs' descriptors must outlive it.
    """

    def __init__(self, blobs: list[LayerBlob]) -> None:
        self._keyed: list[tuple[LayerBlob, tuple[int, int, int, int]]] = []
        self._ranges: dict[tuple[int, int, int, int], tuple[int, tuple[int, int, int]]] = {}  # (fd, its state)
        for blob in blobs:
            assert blob.fd is not None, "a blob from outside is held open"
            hasher(blob)  # a digest cdisk cannot check is refused before any byte is read
            st = os.fstat(blob.fd)
            key = (st.st_dev, st.st_ino, blob.offset, blob.size)
            self._keyed.append((blob, key))
            self._ranges.setdefault(key, (blob.fd, _state(blob.fd)))
        self._found: dict[tuple[int, int, int, int], str] = {}
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._failed: tuple[int, int, int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="hash layers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for key, (fd, _) in self._ranges.items():
            _, _, offset, size = key
            digest, done = hashlib.sha256(), 0
            try:
                while done < size:
                    if self._stopping.is_set():
                        return
                    data = os.pread(fd, min(CHUNK, size - done), offset + done)
                    if not data:
                        break
                    digest.update(data)
                    done += len(data)
            except BaseException as error:  # told by `verify`, in the command's thread
                self._error, self._failed = error, key
                return
            self._found[key] = digest.hexdigest() if done == size else ""

    def verify(self) -> None:
        """Wait for every blob to be hashed, and compare; call it once what read the blobs (qemu-img) is done.

        Raises:
            ImageError: a blob cannot be read whole, changed while it was read, or does not hash to its digest.
        """
        self._thread.join()
        if isinstance(self._error, OSError):
            short = next(blob.short for blob, key in self._keyed if key == self._failed)
            raise ImageError(f"cannot read layer {short} to check it: {self._error.strerror}; save or pull the "
                             "image again")
        if self._error is not None:
            raise self._error
        for blob, key in self._keyed:
            fd, before = self._ranges[key]
            if not self._found.get(key):
                raise ImageError(f"layer {blob.short} is shorter than the image says; save or pull the image again")
            if _state(fd) != before:
                raise ImageError(f"layer {blob.short} changed while cdisk read it; run cdisk again")
            check(blob, self._found[key])

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


def _state(fd: int) -> tuple[int, int, int]:
    """What a write to the file changes: its size, mtime and ctime."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns
