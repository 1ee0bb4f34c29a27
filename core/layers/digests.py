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
import threading

from cdisk.core.errors import ImageError
from cdisk.core.oci.blob import LayerBlob

# What a hashing thread reads at once: large enough that the calls cost nothing, small enough to stop quickly.
CHUNK = 4 << 20
_SHA256 = "sha256:"


def hasher(blob: LayerBlob) -> hashlib._Hash:
    """A fresh hash of the algorithm `blob.digest` names.

    Raises:
        ImageError: a digest of another algorithm (cdisk checks sha256, as every engine writes).
    """
    if not blob.digest.startswith(_SHA256) or len(blob.digest) != len(_SHA256) + 64:
        raise ImageError(f"layer {blob.short} is named by {blob.digest[:80]!r}, not a sha256 digest cdisk can check;"
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


class BlobCheck:
    """The blob hashed by a thread of its own from the moment it is made; `verify` waits for it. `stop` ends it
    early (the command ended first); the blob's descriptor must outlive it."""

    def __init__(self, blob: LayerBlob) -> None:
        assert blob.fd is not None, "a blob from outside is held open"
        self.blob, self._hash = blob, hasher(blob)
        self._stopping = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"hash {blob.short}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        blob, done = self.blob, 0
        assert blob.fd is not None
        try:
            while done < blob.size and not self._stopping.is_set():
                data = os.pread(blob.fd, min(CHUNK, blob.size - done), blob.offset + done)
                if not data:
                    break
                self._hash.update(data)
                done += len(data)
        except OSError as error:
            self._error = error
        self._done = done

    def verify(self) -> None:
        """Wait for the whole blob to be hashed, and compare.

        Raises:
            ImageError: the blob cannot be read whole, or does not hash to its digest.
        """
        self._thread.join()
        if self._error is not None:
            raise ImageError(f"cannot read layer {self.blob.short} to check it: {self._error.strerror}; save or "
                             "pull the image again")
        if self._done != self.blob.size:
            raise ImageError(f"layer {self.blob.short} is shorter than the image says ({self._done} of "
                             f"{self.blob.size} bytes); save or pull the image again")
        check(self.blob, self._hash.hexdigest())

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
