"""Reading what `podman save --format oci-dir` wrote: the image's layer blobs, lowest first."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError
from cdisk.core.saved_layers import LayerBlob

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


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


def layer_blobs(layout: Path, image_id: str) -> list[LayerBlob]:
    """The layer blobs, lowest first, of the manifest whose config is image `image_id`."""
    index = _json(layout / "index.json")
    for entry in index.get("manifests", []):
        manifest = _json(_blob(layout, entry.get("digest", "")))
        if manifest.get("config", {}).get("digest") == f"sha256:{image_id}":
            try:
                return [LayerBlob.whole(_blob(layout, layer.get("digest", ""))) for layer in manifest.get("layers", [])]
            except OSError as error:
                raise ImageError(f"the saved image lacks a layer ({error.strerror}); re-pull the image") from None
    raise ImageError(f"podman saved no manifest for image {image_id[:12]}; re-pull the image")
