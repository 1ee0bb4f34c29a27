"""Reading an OCI layout — what `podman save --format oci-dir` writes, an `oci:` directory, the inside of an
oci-archive or of Docker 25's `docker save` — wherever its files lie (`image_files`): the index, the manifest
of one image, its config, its layer blobs lowest first.
"""

from __future__ import annotations

import platform as host
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError
from cdisk.core.image_files import DirectoryFiles, ImageFiles
from cdisk.core.saved_layers import LayerBlob

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
# uname's names for the architectures, as OCI platforms name them.
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
                  "s390x": "s390x"}


def _podman_saved(layout: Path | ImageFiles) -> ImageFiles:
    if isinstance(layout, Path):
        return DirectoryFiles(layout, "the image podman saved", "re-pull the image")
    return layout


def blob_name(files: ImageFiles, digest: str) -> str:
    """The name of the blob `digest` in the layout (a sha256 digest only: no name can be smuggled in)."""
    match = _DIGEST.match(str(digest))
    if not match:
        raise ImageError(f"{files.what} names a blob {digest!r} that is not a sha256 digest; {files.fix}")
    return f"blobs/sha256/{match.group(1)}"


def layer_blobs(layout: Path | ImageFiles, image_id: str) -> list[LayerBlob]:
    """The layer blobs, lowest first, of the manifest whose config is image `image_id`."""
    files = _podman_saved(layout)
    for entry in _manifest_entries(files, files.json("index.json")):
        manifest = files.json(blob_name(files, entry.get("digest", "")))
        if manifest.get("config", {}).get("digest") == f"sha256:{image_id}":
            return manifest_layers(files, manifest)
    raise ImageError(f"{files.what} holds no manifest for image {image_id[:12]}; {files.fix}")


def manifest_layers(files: ImageFiles, manifest: dict[str, Any],
                    advice: str = "use a podman that supports `save --uncompressed`") -> list[LayerBlob]:
    return [files.blob(blob_name(files, layer.get("digest", "")), str(layer.get("digest")), advice)
            for layer in manifest.get("layers", [])]


def _manifest_entries(files: ImageFiles, index: dict[str, Any]) -> list[dict[str, Any]]:
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ImageError(f"the index of {files.what} lists no manifests; {files.fix}")
    return [entry for entry in entries if isinstance(entry, dict)]


def host_platform() -> str:
    machine = host.machine()
    return f"linux/{_ARCHITECTURES.get(machine, machine)}"


def _platform_of(entry: dict[str, Any]) -> str:
    plat = entry.get("platform") or {}
    text = f"{plat.get('os', '?')}/{_ARCHITECTURES.get(plat.get('architecture', '?'), plat.get('architecture', '?'))}"
    return text + (f"/{plat['variant']}" if plat.get("variant") else "")


@dataclass(frozen=True)
class Chosen:
    """One image of a layout: its manifest (and that manifest's digest) and its config."""

    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def image_id(self) -> str:
        return str(self.manifest.get("config", {}).get("digest", "")).removeprefix("sha256:")


def choose(files: ImageFiles, ref: str | None, platform: str | None = None) -> Chosen:
    """The image `ref` names in the layout's index (its `org.opencontainers.image.ref.name`), or its only one;
    an image index is resolved to the manifest of `platform` (default: this host's).
    """
    entries = _manifest_entries(files, files.json("index.json"))
    if ref:
        named = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == ref]
        if not named:
            names = sorted({str((e.get("annotations") or {}).get(REF_NAME)) for e in entries} - {"None"})
            raise ImageError(f"{files.what} has no image named {ref!r} (it has: {', '.join(names) or 'no names'}); "
                             "name one of them after the path")
        entries = named
    wanted = platform or host_platform()
    for _ in range(4):  # an index inside the index, at most a few levels
        if len(entries) != 1:
            fitting = [e for e in entries if _platform_of(e).startswith(wanted)]
            if len(fitting) != 1:
                there = ", ".join(sorted({_platform_of(e) for e in entries}))
                raise ImageError(f"{files.what} holds {len(entries)} images ({there}) and none only for {wanted}; "
                                 "name one after the path (oci:DIR:NAME)")
            entries = fitting
        entry = entries[0]
        document = files.json(blob_name(files, entry.get("digest", "")))
        if entry.get("mediaType") in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
            entries = _manifest_entries(files, document)
            continue
        config = files.json(blob_name(files, (document.get("config") or {}).get("digest", "")))
        return Chosen(str(entry.get("digest")), document, config if isinstance(config, dict) else {})
    raise ImageError(f"{files.what} nests image indexes too deeply; {files.fix}")
