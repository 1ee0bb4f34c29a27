"""Reading what `docker save` wrote: one tar (a docker-archive) holding `manifest.json`, the image's config and
its layers — `<id>/layer.tar` up to Docker 24, `blobs/sha256/<digest>` (an OCI layout inside) from 25 on. A layer
is read where it lies in the archive: the disk is then at the layer's offset in the archive plus its own
offset in the layer, and nothing is extracted.

The archive is read with the same Go-exact tar reader as the layers. Docker writes a layer it saved once
already as a symlink to the first copy (`<id>/layer.tar -> ../<other>/layer.tar`): such links are followed
inside the archive, a few hops at most.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError
from cdisk.core.image_files import ImageFiles, TarFiles
from cdisk.core.saved_layers import LayerBlob

MANIFEST = "manifest.json"
COMPRESSED_ADVICE = ("docker's containerd image store saves compressed layers: read the image with podman "
                     "(`--engine podman` after `podman pull`) or turn the containerd store off in docker's "
                     "daemon.json (\"features\": {\"containerd-snapshotter\": false})")


def _docker_saved(archive: Path | ImageFiles) -> ImageFiles:
    if isinstance(archive, Path):
        return TarFiles(archive, "the archive docker saved", "re-pull the image")
    return archive


def _items(files: ImageFiles) -> list[dict[str, Any]]:
    manifest = files.json(MANIFEST)
    return [item for item in manifest if isinstance(item, dict)] if isinstance(manifest, list) else []


def _config_id(item: dict[str, Any]) -> str:
    return posixpath.basename(str(item.get("Config", ""))).removesuffix(".json")


def _blobs(files: ImageFiles, item: dict[str, Any], diff_ids: tuple[str, ...] | list[str]) -> list[LayerBlob]:
    layers = [str(name) for name in item.get("Layers") or []]
    if len(layers) != len(diff_ids):
        raise ImageError(f"{files.what} lists {len(layers)} layers where the image has {len(diff_ids)}; {files.fix}")
    return [files.blob(name, str(digest), COMPRESSED_ADVICE) for name, digest in zip(layers, diff_ids, strict=True)]


def layer_blobs(archive: Path | ImageFiles, image_id: str, diff_ids: tuple[str, ...]) -> list[LayerBlob]:
    """The layers, lowest first, of image `image_id` (hex) in the docker-archive `archive`, as byte ranges of it.

    `diff_ids` (the image's RootFS layers, lowest first) name them. An archive of one image (cdisk saves one,
    by ID) is that image's, whatever its config is called: with docker's containerd image store an image's
    ID is its manifest's digest, not its config's.
    """
    files = _docker_saved(archive)
    items = _items(files)
    for item in items:
        if len(items) == 1 or _config_id(item) == image_id:
            return _blobs(files, item, diff_ids)
    raise ImageError(f"{files.what} holds no manifest for image {image_id[:12]}; {files.fix}")


@dataclass(frozen=True)
class Archived:
    """One image of a docker-archive: its ID (its config's digest), config and layers."""

    image_id: str
    config: dict[str, Any]
    layers: list[LayerBlob]


def _normal(reference: str) -> str:
    name = reference.removeprefix("docker.io/library/").removeprefix("docker.io/")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else name + ":latest"


def choose(files: ImageFiles, ref: str | None) -> Archived:
    """The image `ref` names among the archive's RepoTags (or `@N`, the N-th image), or its only one."""
    items = _items(files)
    if ref and ref.startswith("@") and ref[1:].isdigit() and int(ref[1:]) < len(items):
        items = [items[int(ref[1:])]]
    elif ref:
        items = [i for i in items if _normal(ref) in {_normal(str(t)) for t in i.get("RepoTags") or []}]
    if len(items) != 1:
        tags = sorted({str(t) for i in _items(files) for t in i.get("RepoTags") or []})
        raise ImageError(f"{files.what} holds {len(items) or 'no'} image(s) {'named ' + repr(ref) if ref else ''} "
                         f"(tags: {', '.join(tags) or 'none'}); name one after the path "
                         "(docker-archive:FILE:NAME:TAG, or :@N)")
    config = files.json(str(items[0].get("Config", "")))
    config = config if isinstance(config, dict) else {}
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    return Archived(_config_id(items[0]), config, _blobs(files, items[0], [str(d) for d in diff_ids]))
