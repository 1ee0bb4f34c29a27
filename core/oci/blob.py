"""A layer blob: the bytes of one saved layer, wherever they lie (a blob file of an OCI layout, a member of an
archive, a file podman or docker saved), held by a descriptor of its own; and what its first bytes say.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cdisk.core.errors import ImageError

# What `read_head` reads: one tar block, enough for every magic number below and for a tar's first header.
HEAD = 512
# The magic numbers containers/storage's DetectCompression knows, as it knows them (gzip with its
# deflate method byte): a compressed blob has no stable offsets, anything else is read as a tar.
COMPRESSED = {b"\x1f\x8b\x08": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


@dataclass(frozen=True)
class LayerBlob:
    """One saved layer: the `size` bytes at `offset` of `path`. `digest` names it (its diff ID, or its
    descriptor's digest); `disk_name`, set for a disk artifact's layer, is the file under /disk/ it stands for
    (the layer is that disk, unless it turns out to be a tar). `fd`, when set, holds the file open (`path` is
    then /dev/fd/N): what is read cannot be swapped underneath.

    `outside`: the blob came from outside cdisk and the engines (a file source): its bytes must hash to
    `digest` before anything it held is published (`layers.digests`). `tar_digest`: `digest` is that of the
    uncompressed tar (a docker-archive's diff ID), not of the bytes as stored.
    """

    path: Path
    offset: int
    size: int
    digest: str
    fd: int | None = None
    disk_name: str | None = None
    outside: bool = False
    tar_digest: bool = False

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


def own_fd(fd: int) -> int:
    """A descriptor of its own for a layer (>= 3: never one of the standard streams a child gets)."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def close_blobs(blobs: Iterable[LayerBlob]) -> None:
    """Close the layers' descriptors (each layer holds one of its own)."""
    for blob in blobs:
        if blob.fd is not None:
            os.close(blob.fd)


def all_or_none(opening: Iterable[LayerBlob]) -> list[LayerBlob]:
    """Every layer `opening` opens, or — should one of them fail — none: those already open are closed again."""
    opened: list[LayerBlob] = []
    try:
        for blob in opening:
            opened.append(blob)
    except BaseException:
        close_blobs(opened)
        raise
    return opened


def compression_of(head: bytes) -> str | None:
    """The compression a blob's first bytes show (gzip, zstd, …), or None for a plain tar (or disk)."""
    return next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)


def read_head(blob: LayerBlob) -> bytes:
    """The blob's first block (fewer bytes when it is shorter)."""
    try:
        if blob.fd is not None:
            return os.pread(blob.fd, min(HEAD, blob.size), blob.offset)
        with blob.path.open("rb") as f:
            f.seek(blob.offset)
            return f.read(min(HEAD, blob.size))
    except OSError as error:
        raise unreadable(blob, error) from None


def unreadable(blob: LayerBlob, error: OSError) -> ImageError:
    return ImageError(f"cannot read layer {blob.short} of the saved image: {error.strerror}; re-pull the image")
