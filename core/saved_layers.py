"""Layers an engine saved (a blob file of an OCI layout, or a member of a docker-archive), read as the engine
unpacks them, in place: a layer is a byte range of a file, never extracted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cdisk.core.errors import ImageError, LayerRefused, UnsafeImageError
from cdisk.core.layer_unpack import members_from_tar
from cdisk.core.layers import LayerMember, MergedTree
from cdisk.core.tar_headers import read_entries

# The magic numbers containers/storage's DetectCompression knows, as it knows them (gzip with its
# deflate method byte): a compressed blob has no stable offsets, anything else is read as a tar.
COMPRESSED = {b"\x1f\x8b\x08": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


@dataclass(frozen=True)
class LayerBlob:
    """One saved layer: the `size` bytes at `offset` of `path`. `digest` names it (its diff ID);
    `compressed_advice` is the way out offered when it turns out compressed. `fd`, when set, holds the file open
    (`path` is then /dev/fd/N): what is read cannot be swapped underneath.
    """

    path: Path
    offset: int
    size: int
    digest: str
    compressed_advice: str = "use a podman that supports `save --uncompressed`"
    fd: int | None = None

    @classmethod
    def whole(cls, path: Path, digest: str = "") -> LayerBlob:
        """A blob that is a file of its own (an OCI layout's, named by its digest)."""
        return cls(path, 0, path.stat().st_size, digest or f"sha256:{path.name}")

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


class _Window:
    """`size` bytes at `offset` of an open file, seen as a file of their own (for the tar reader)."""

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self.file, self.offset, self.size = file, offset, size

    def seek(self, position: int) -> None:
        self.file.seek(self.offset + position)

    def read(self, length: int) -> bytes:
        return self.file.read(max(0, min(length, self.size - (self.file.tell() - self.offset))))


def check_plain_tar(blob: LayerBlob, head: bytes) -> None:
    """Refuse a layer that is not a plain tar, whatever its media type claims.

    podman can label a plain-tar blob `tar+gzip` or `tar+zstd`, so only the bytes are trusted.
    """
    for magic, name in COMPRESSED.items():
        if head.startswith(magic):
            raise UnsafeImageError(f"layer {blob.short} is {name}-compressed, so the disk cannot be read in "
                                   f"place; {blob.compressed_advice}")


def read_layer(blob: LayerBlob, layer: int) -> list[LayerMember]:
    """The contents of one plain-tar layer as the engine unpacks it, with its files' data offsets (from the
    start of the layer). A 0-byte layer is an empty layer, as podman takes it.
    """
    try:
        with (os.fdopen(os.dup(blob.fd), "rb") if blob.fd is not None else blob.path.open("rb")) as f:
            window = _Window(f, blob.offset, blob.size)
            window.seek(0)
            check_plain_tar(blob, window.read(8))
            return members_from_tar(read_entries(window, blob.size), layer)  # type: ignore[arg-type]
    except LayerRefused as error:
        raise UnsafeImageError(f"layer {blob.short} is refused: {error.what} at byte {error.offset}; "
                               f"{LayerRefused.ADVICE}") from None
    except OSError as error:
        raise ImageError(f"cannot read layer {blob.short} of the saved image: {error.strerror}; "
                         "re-pull the image") from None


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


def merged_tree(blobs: list[LayerBlob]) -> MergedTree:
    """The image's merged view from its saved layers, lowest first."""
    return MergedTree([read_layer(blob, index) for index, blob in enumerate(blobs)])
