"""Reading what `docker save` wrote: one tar (a docker-archive) holding `manifest.json`, the image's config and
its layers — `<id>/layer.tar` up to Docker 24, `blobs/sha256/<digest>` (an OCI layout inside) from 25 on. A layer
is read where it lies in the archive: the disk is then at the layer's offset in the archive plus its own
offset in the layer, and nothing is extracted.

The archive is read with the same Go-exact tar reader as the layers. Docker writes a layer it saved once
already as a symlink to the first copy (`<id>/layer.tar -> ../<other>/layer.tar`): such links are followed
inside the archive, a few hops at most.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError, LayerRefused
from cdisk.core.layer_unpack import go_clean
from cdisk.core.saved_layers import LayerBlob
from cdisk.core.tar_headers import REGULAR, SYMLINK, TarEntry, read_entries

MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20  # docker's own manifest.json is a few hundred bytes per image
SYMLINK_HOPS = 8
COMPRESSED_ADVICE = ("docker's containerd image store saves compressed layers: read the image with podman "
                     "(`--engine podman` after `podman pull`) or turn the containerd store off in docker's "
                     "daemon.json (\"features\": {\"containerd-snapshotter\": false})")


def _entries(archive: Path) -> dict[str, TarEntry]:
    """The archive's members by cleaned name (no leading /), as Go's reader sees them."""
    try:
        with archive.open("rb") as f:
            size = archive.stat().st_size
            return {go_clean("/" + entry.name).lstrip("/"): entry for entry in read_entries(f, size)}
    except LayerRefused as error:
        raise ImageError(f"docker save wrote an archive cdisk cannot read: {error.what} at byte {error.offset}; "
                         "check `docker save` works") from None
    except OSError as error:
        raise ImageError(f"cannot read the archive docker saved: {error.strerror}; check the temp dir") from None


def _member(entries: dict[str, TarEntry], name: str) -> TarEntry:
    """The regular file `name` of the archive, symlinks followed inside it."""
    for _ in range(SYMLINK_HOPS):
        entry = entries.get(name)
        if entry is None:
            break
        if entry.type == SYMLINK:
            name = go_clean("/" + posixpath.join(posixpath.dirname(name), entry.linkname)).lstrip("/")
            continue
        if entry.type == REGULAR and not entry.sparse:
            return entry
        break
    raise ImageError(f"the archive docker saved has no file {name!r} that its manifest names; re-pull the image")


def _json(archive: Path, entry: TarEntry) -> Any:
    if entry.size > MANIFEST_LIMIT:
        raise ImageError(f"{entry.name} in the archive docker saved is larger than {MANIFEST_LIMIT} bytes; "
                         "re-pull the image")
    try:
        with archive.open("rb") as f:
            f.seek(entry.data_offset)
            return json.loads(f.read(entry.size))
    except (OSError, ValueError) as error:
        raise ImageError(f"cannot read {entry.name} of the archive docker saved: {error}; re-pull the image") \
            from None


def layer_blobs(archive: Path, image_id: str, diff_ids: tuple[str, ...]) -> list[LayerBlob]:
    """The layers, lowest first, of image `image_id` (hex) in the docker-archive `archive`, as byte ranges of it.

    `diff_ids` (the image's RootFS layers, lowest first) name them. An archive of one image (cdisk saves one,
    by ID) is that image's, whatever its config is called: with docker's containerd image store an image's
    ID is its manifest's digest, not its config's.
    """
    entries = _entries(archive)
    manifest = _json(archive, _member(entries, MANIFEST))
    items = manifest if isinstance(manifest, list) else []
    for item in items:
        config = str(item.get("Config", ""))
        if len(items) > 1 and posixpath.basename(config).removesuffix(".json") != image_id:
            continue
        layers = [str(name) for name in item.get("Layers") or []]
        if len(layers) != len(diff_ids):
            raise ImageError(f"the archive docker saved lists {len(layers)} layers where the image has "
                             f"{len(diff_ids)}; re-pull the image")
        blobs = []
        for name, digest in zip(layers, diff_ids, strict=True):
            entry = _member(entries, go_clean("/" + name).lstrip("/"))
            blobs.append(LayerBlob(archive, entry.data_offset, entry.size, digest, COMPRESSED_ADVICE))
        return blobs
    raise ImageError(f"docker saved no manifest for image {image_id[:12]}; re-pull the image")
