"""Reading an OCI layout — what `podman save --format oci-dir` writes, an `oci:` directory, the inside of an
oci-archive or of Docker 25's `docker save` — wherever its files lie (`oci.files`): the index, the manifest
of one image, its config, its layer blobs lowest first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cdisk.core.errors import ImageError, NoManifest
from cdisk.core.oci.blob import LayerBlob, all_or_none
from cdisk.core.oci.files import LAYERS_LIMIT, DirectoryFiles, ImageFiles, field_of, need
from cdisk.core.oci.media_types import INDEX_TYPES, REF_NAME, TITLE
from cdisk.core.oci.platform import fits, host_platform, platform_text

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_FALLBACK = re.compile(r"layer-[0-9]+")
KUBEVIRT_DISK_NAME = "io.kubevirt.disk.name"
# podman machine's disk artifacts: one manifest per hypervisor's disk format, told apart by this annotation.
DISKTYPE = "disktype"
NAMES_SHOWN = 10


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
    try:
        for entry in _manifest_entries(files, files.json("index.json")):
            manifest = need(files.json(blob_name(files, entry.get("digest", ""))), dict, "a manifest", files)
            if field_of(manifest, "config", dict, files).get("digest") == f"sha256:{image_id}":
                return manifest_layers(files, manifest)
    finally:
        files.close()
    raise NoManifest(f"{files.what} holds no manifest for image {image_id[:12]}; {files.fix}")


def manifest_layers(files: ImageFiles, manifest: dict[str, Any], artifact: bool = False) -> list[LayerBlob]:
    """The manifest's layer blobs, lowest first, each held open (none, if one of them fails). The layers of a
    disk `artifact` are named for what they hold (`disk_names`).
    """
    layers = [need(layer, dict, "a layer", files) for layer in field_of(manifest, "layers", list, files)]
    if len(layers) > LAYERS_LIMIT:
        raise ImageError(f"{files.what} has {len(layers)} layers, more than {LAYERS_LIMIT}; {files.fix}")
    names = disk_names(layers) if artifact else [None] * len(layers)

    def opening() -> Iterator[LayerBlob]:
        for layer, name in zip(layers, names, strict=True):
            digest = str(layer.get("digest", ""))
            yield replace(files.blob(blob_name(files, digest), digest), disk_name=name)

    return all_or_none(opening())


def disk_names(layers: list[dict[str, Any]]) -> list[str | None]:
    """The file each layer of a disk artifact stands for under /disk/: the name its annotations give
    (KubeVirt's `io.kubevirt.disk.name`, else the `org.opencontainers.image.title` ORAS and podman write), its
    last path component; `layer-N` (N its place) when there is none, it is a dot-file, not UTF-8, too long, of
    the form `layer-N` itself, or an earlier layer has it — no two layers ever share a name.
    """
    names: list[str | None] = []
    for index, layer in enumerate(layers):
        notes = _text(layer, "annotations")
        name = (notes.get(KUBEVIRT_DISK_NAME) or notes.get(TITLE) or "").rpartition("/")[2]
        names.append(name if _fit(name) and name not in names else f"layer-{index}")
    return names


def _fit(name: str) -> bool:
    try:
        length = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate JSON can carry
        return False
    return 0 < length <= 200 and not name.startswith(".") and "\0" not in name and not _FALLBACK.fullmatch(name)


def _manifest_entries(files: ImageFiles, index: Any) -> list[dict[str, Any]]:
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ImageError(f"the index of {files.what} lists no manifests; {files.fix}")
    return [entry for entry in entries if isinstance(entry, dict)]


def _text(entry: dict[str, Any], key: str) -> dict[str, str]:
    """A map of strings in an index entry (annotations: a Go map, its keys exact); anything else counts as
    absent."""
    value = entry.get(key)
    return {str(k): v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


def _shown(names: set[str]) -> str:
    listed = sorted(names)
    more = f", … ({len(listed) - NAMES_SHOWN} more)" if len(listed) > NAMES_SHOWN else ""
    return ", ".join(repr(name[:100]) for name in listed[:NAMES_SHOWN]) + more


def _platform_of(entry: dict[str, Any]) -> str:
    plat = entry.get("platform")  # a struct: its fields as Go matches them (`_text` is for maps)
    plat = plat if isinstance(plat, dict) else {}

    def field(name: str, default: str) -> str:
        value = plat.get(name, default)
        return value if isinstance(value, str) else default

    return platform_text(field("os", "?"), field("architecture", "?"), field("variant", ""))


def _fits(entry: dict[str, Any], wanted: str) -> bool:
    return fits(_platform_of(entry), wanted)


@dataclass(frozen=True)
class Chosen:
    """One image of a layout: its manifest (and that manifest's digest) and its config."""

    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def artifact(self) -> bool:
        """A disk artifact (ORAS, KubeVirt, podman machine), not an image: a config with no rootfs (`{}`)."""
        return "rootfs" not in self.config

    @property
    def image_config(self) -> dict[str, Any]:
        """The config; an artifact's with the rootfs it lacks: its layers, named by their blobs' digests."""
        if not self.artifact:
            return self.config
        layers = self.manifest.get("layers")
        digests = [layer.get("digest", "") for layer in layers if isinstance(layer, dict)] \
            if isinstance(layers, list) else []
        return {**self.config, "rootfs": {"diff_ids": digests}}

    @property
    def image_id(self) -> str:
        """The config's digest; an artifact's, whose configs are all alike (`{}`), is its manifest's."""
        digest = self.digest if self.artifact else self.manifest.get("config", {}).get("digest", "")
        return str(digest).removeprefix("sha256:")


def choose(files: ImageFiles, ref: str | None, platform: str | None = None, disktype: str | None = None,
           ) -> Chosen:
    """The image `ref` names in the layout's index (its `org.opencontainers.image.ref.name`), or its only one;
    an image index is resolved to the manifest of `platform` (default: this host's), and among podman machine's
    disk artifacts for it, to the one of `disktype` (default: qemu).
    """
    asked, disktype = disktype is not None, disktype or "qemu"
    entries = _manifest_entries(files, files.json("index.json"))
    if ref:
        named = [e for e in entries if _text(e, "annotations").get(REF_NAME) == ref]
        if not named:
            names = {_text(e, "annotations").get(REF_NAME, "") for e in entries} - {""}
            raise ImageError(f"{files.what} has no image named {ref[:100]!r} (it has: {_shown(names) or 'no names'});"
                             " name one of them after the path")
        entries = named
    wanted = platform or host_platform()
    for _ in range(4):  # an index inside the index, at most a few levels
        # One entry is taken as it is unless it says it is for another platform; of several, the one for this.
        fitting = [e for e in entries if _fits(e, wanted) or (len(entries) == 1 and "platform" not in e)]
        if len(fitting) > 1:  # the same platform twice, with and without a variant: the plain one
            fitting = [e for e in fitting if len(_platform_of(e).split("/")) == 2] or fitting
        if any(DISKTYPE in _text(e, "annotations") for e in fitting) and (len(fitting) > 1 or asked):
            kinds = {_text(e, "annotations").get(DISKTYPE, "") for e in fitting} - {""}
            fitting = [e for e in fitting if _text(e, "annotations").get(DISKTYPE) == disktype]
            if len(fitting) != 1:
                raise ImageError(f"{files.what} holds disks of the types {_shown(kinds)} for {wanted}, not one only "
                                 f"of type {disktype[:100]!r}; choose one with --disktype")
        if len(fitting) != 1:
            there = _shown({_platform_of(e) for e in entries})
            raise ImageError(f"{files.what} holds {len(entries)} image(s) ({there}) and not one only for {wanted}; "
                             f"{'name one after the path (oci:DIR:NAME)' if not ref else files.fix}")
        entry = fitting[0]
        document = need(files.json(blob_name(files, entry.get("digest", ""))), dict, "a manifest", files)
        if entry.get("mediaType") in INDEX_TYPES or document.get("mediaType") in INDEX_TYPES:
            entries = _manifest_entries(files, document)
            continue
        config_ref = field_of(document, "config", dict, files)
        config = need(files.json(blob_name(files, config_ref.get("digest", ""))), dict, "the config", files)
        return Chosen(str(entry.get("digest")), document, config)
    raise ImageError(f"{files.what} nests image indexes too deeply; {files.fix}")
