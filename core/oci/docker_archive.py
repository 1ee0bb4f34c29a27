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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError, NoManifest
from cdisk.core.oci.blob import LayerBlob, all_or_none
from cdisk.core.oci.files import LAYERS_LIMIT, ImageFiles, TarFiles, field_of, need

MANIFEST = "manifest.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _docker_saved(archive: Path | ImageFiles) -> ImageFiles:
    if isinstance(archive, Path):
        return TarFiles(archive, "the archive docker saved", "re-pull the image")
    return archive


def _items(files: ImageFiles) -> list[dict[str, Any]]:
    manifest = files.json(MANIFEST)
    return [item for item in manifest if isinstance(item, dict)] if isinstance(manifest, list) else []


def _config_id(item: dict[str, Any]) -> str:
    """The image ID the config's name gives (64 hex digits: docker names it by its digest), or ""."""
    name = posixpath.basename(str(item.get("Config", ""))).removesuffix(".json")
    return name if _HEX64.match(name) else ""


def _blobs(files: ImageFiles, item: dict[str, Any], diff_ids: tuple[str, ...] | list[str]) -> list[LayerBlob]:
    layers = [need(name, str, "a layer name", files) for name in field_of(item, "Layers", list, files)]
    if len(layers) > LAYERS_LIMIT:
        raise ImageError(f"{files.what} has {len(layers)} layers, more than {LAYERS_LIMIT}; {files.fix}")
    if len(layers) != len(diff_ids):
        raise ImageError(f"{files.what} lists {len(layers)} layers where the image has {len(diff_ids)}; {files.fix}")
    return all_or_none(files.blob(name, str(digest))
                       for name, digest in zip(layers, diff_ids, strict=True))


def layer_blobs(archive: Path | ImageFiles, image_id: str, diff_ids: tuple[str, ...]) -> list[LayerBlob]:
    """The layers, lowest first, of image `image_id` (hex) in the docker-archive `archive`, as byte ranges of it.

    `diff_ids` (the image's RootFS layers, lowest first) name them. An archive of one image (cdisk saves one,
    by ID) is that image's, whatever its config is called: with docker's containerd image store an image's
    ID is its manifest's digest, not its config's.
    """
    files = _docker_saved(archive)
    try:
        items = _items(files)
        for item in items:
            if len(items) == 1 or _config_id(item) == image_id:
                return _blobs(files, item, diff_ids)
    finally:
        if isinstance(files, TarFiles):
            files.close()
    raise NoManifest(f"{files.what} holds no manifest for image {image_id[:12]}; {files.fix}")


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

    def tags(item: dict[str, Any]) -> set[str]:
        return {_normal(t) for t in field_of(item, "RepoTags", list, files) if isinstance(t, str)}

    number = ref[1:] if ref and ref.startswith("@") else ""
    if number.isascii() and number.isdigit() and len(number) < 7:
        items = items[int(number):int(number) + 1]
    elif ref:
        items = [item for item in items if _normal(ref) in tags(item)]
    if len(items) != 1:
        shown = sorted({t for item in _items(files) for t in tags(item)})
        listed = ", ".join(repr(t[:100]) for t in shown[:10]) + (", …" if len(shown) > 10 else "")
        raise ImageError(f"{files.what} holds {len(items) or 'no'} image(s){' named ' + repr(ref[:100]) if ref else ''}"
                         f" (tags: {listed or 'none'}); name one after the path (docker-archive:FILE:NAME:TAG, or :@N)")
    config = need(files.json(need(items[0].get("Config", ""), str, "'Config'", files)), dict, "the config", files)
    diff_ids = [need(d, str, "a diff ID", files) for d in field_of(field_of(config, "rootfs", dict, files),
                                                                    "diff_ids", list, files)]
    return Archived(_config_id(items[0]), config, _blobs(files, items[0], diff_ids))
