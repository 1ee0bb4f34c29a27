"""Reading what `podman save --format oci-dir` wrote: the image's layer blobs, checked to be plain tar."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError, LayerRefused, UnsafeImageError
from cdisk.core.layer_unpack import members_from_tar
from cdisk.core.layers import LayerMember, MergedTree
from cdisk.core.tar_headers import read_entries

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
# The magic numbers containers/storage's DetectCompression knows, as it knows them (gzip with its
# deflate method byte): a compressed blob has no stable offsets, anything else is read as a tar.
_COMPRESSED = {b"\x1f\x8b\x08": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


def _blob(layout: Path, digest: str) -> Path:
    match = _DIGEST.match(digest)
    if not match:
        raise ImageError(f"the saved image names a blob {digest!r} that is not a sha256 digest; "
                         "re-pull the image")
    return layout / "blobs" / "sha256" / match.group(1)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ImageError(f"cannot read {path.name} of the saved image: {error}; re-pull the image") from None


def layer_blobs(layout: Path, image_id: str) -> list[Path]:
    """The layer blobs, lowest first, of the manifest whose config is image `image_id`."""
    index = _json(layout / "index.json")
    for entry in index.get("manifests", []):
        manifest = _json(_blob(layout, entry.get("digest", "")))
        if manifest.get("config", {}).get("digest") == f"sha256:{image_id}":
            return [_blob(layout, layer.get("digest", "")) for layer in manifest.get("layers", [])]
    raise ImageError(f"podman saved no manifest for image {image_id[:12]}; re-pull the image")


def check_plain_tar(blob: Path) -> None:
    """Refuse a layer that is not a plain tar, whatever its media type claims.

    podman can label a plain-tar blob `tar+gzip` or `tar+zstd`, so only the bytes are trusted.
    """
    with blob.open("rb") as f:
        head = f.read(8)
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            raise UnsafeImageError(f"layer {blob.name[:12]} is {name}-compressed, so the disk cannot be read "
                                   "in place; use a podman that supports `save --uncompressed`")


def read_layer(blob: Path, layer: int) -> list[LayerMember]:
    """The contents of one plain-tar layer as podman unpacks it, with its files' data offsets.

    A 0-byte blob is an empty layer, as podman takes it.
    """
    check_plain_tar(blob)
    try:
        with blob.open("rb") as f:
            return members_from_tar(read_entries(f, blob.stat().st_size), layer)
    except LayerRefused as error:
        raise UnsafeImageError(f"layer {blob.name[:12]} is refused: {error.what} at byte {error.offset}; "
                               f"{LayerRefused.ADVICE}") from None
    except OSError as error:
        raise ImageError(f"cannot read layer {blob.name[:12]} of the saved image: {error.strerror}; "
                         "re-pull the image") from None


def merged_tree(blobs: list[Path]) -> MergedTree:
    """The image's merged view from its saved layers."""
    return MergedTree([read_layer(blob, index) for index, blob in enumerate(blobs)])
