"""Where an engine's overlay store keeps what vouches for a layer: its files (`…/diff`, the layer directories an
inspection names) and its tar-split, the layer's tar without its contents.

- containers/storage (podman; `layers.go`): `<graphroot>/overlay/<layer-id>/diff` and
  `<graphroot>/overlay-layers/<layer-id>.tar-split.gz`.
- moby (docker, overlay2; `layer/layer_store.go`, `layer/filestore.go`): `<data-root>/overlay2/<cache-id>/diff`,
  and `<data-root>/image/overlay2/layerdb/sha256/<chain-id>/` holding `tar-split.json.gz`, `cache-id` (the
  overlay2 directory's name) and `diff` (the diff ID); the chain ID of the lowest layer is its diff ID, of each
  one above `sha256(chain-id below + " " + diff ID)`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError

_OVERLAY = {"podman": "overlay", "docker": "overlay2"}


@dataclass(frozen=True)
class StoredLayer:
    """One layer of an image in an engine's store: the diff ID the image says it has, its directory of files,
    and its tar-split."""

    diff_id: str
    directory: str
    tar_split: str


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """The layers' chain IDs (moby's `layer.CreateChainID`), lowest first."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else
                     "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def stored_layers(image: Image) -> list[StoredLayer]:
    """The image's layers where its engine's store keeps them, lowest first.

    Raises:
        ImageError: the store keeps them otherwise (another driver than overlay, directories the engine does not
        name, metadata that names another layer).
    """
    driver = _OVERLAY.get(image.engine)
    dirs = list(reversed(image.layer_dirs))
    if driver is None or image.store != driver or len(dirs) != len(image.layers) or not dirs:
        raise ImageError(f"{image.reference} is kept by {image.engine}'s {image.store or 'unknown'} driver, whose "
                         "layers cdisk cannot check in place; check an image in an overlay store")
    for directory in dirs:
        if os.path.basename(directory) != "diff":
            raise ImageError(f"{image.engine} names {directory} as a layer's directory, not an overlay layer's "
                             "diff; check the store's configuration")
    if image.engine == "podman":
        return [StoredLayer(diff_id, directory, _podman_tar_split(directory))
                for diff_id, directory in zip(image.layers, dirs, strict=True)]
    return [StoredLayer(diff_id, directory, _docker_tar_split(directory, chain_id))
            for diff_id, directory, chain_id in zip(image.layers, dirs, chain_ids(image.layers), strict=True)]


def _podman_tar_split(directory: str) -> str:
    layer = os.path.dirname(directory)
    graph_root = os.path.dirname(os.path.dirname(layer))
    return os.path.join(graph_root, "overlay-layers", os.path.basename(layer) + ".tar-split.gz")


def _docker_tar_split(directory: str, chain_id: str) -> str:
    cache_id = os.path.basename(os.path.dirname(directory))
    data_root = os.path.dirname(os.path.dirname(os.path.dirname(directory)))
    layer_db = os.path.join(data_root, "image", "overlay2", "layerdb", "sha256", chain_id.removeprefix("sha256:"))
    try:
        with open(os.path.join(layer_db, "cache-id"), encoding="utf-8", errors="replace") as file:
            kept = file.read(200).strip()
    except OSError as error:
        raise ImageError(f"docker's metadata of layer {chain_id[7:19]} cannot be read ({error.strerror}); the "
                         "store is damaged: remove the image and pull it again") from error
    if kept != cache_id:
        raise ImageError(f"docker's metadata of layer {chain_id[7:19]} names another directory ({kept[:80]!r}); "
                         "the store is damaged: remove the image and pull it again")
    return os.path.join(layer_db, "tar-split.json.gz")
