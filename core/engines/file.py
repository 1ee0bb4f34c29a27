"""The `file` engine: images that are files, read with no engine at all — an OCI layout directory
(`oci:DIR[:NAME]`), an oci-archive (`oci-archive:FILE[:NAME]`) or a docker-archive
(`docker-archive:FILE[:NAME:TAG|:@N]`), named as skopeo and podman name them. Their layers are read where they
lie: a blob of the directory, or a member of the archive at its offset — nothing is copied, not even to a temp
dir. A push of an image file (for `cdisk build`) is skopeo's (`engines.skopeo`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, UsageError
from cdisk.core.oci.blob import LayerBlob, close_blobs
from cdisk.core.progress import Progress
from cdisk.core.request import ImageRequest

_FIX = "check the path, or save the image again"


def split(reference: str) -> tuple[str, Path, str | None]:
    """(transport, path, name or None): the path ends at the first ':' after the transport, as skopeo reads it."""
    transport, _, rest = reference.partition(":")
    path, _, name = rest.partition(":")
    if not path:
        raise UsageError(f"{reference}: no path after {transport}:; write {transport}:PATH[:NAME]")
    return transport, Path(path), name or None


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _open(reference: str) -> tuple[str, Any, str | None]:
    from cdisk.core.oci.files import DirectoryFiles, TarFiles

    transport, path, name = split(reference)
    try:
        # lstat: an index.json that is a symlink is refused alike wherever it points (no oracle of host paths).
        if transport == "oci" and not _regular_file(path / "index.json"):
            raise ImageError(f"{path} is not an OCI layout (no index.json); {_FIX}")
        if transport != "oci" and not path.is_file():
            raise ImageError(f"{path} is not a file; {_FIX}")
    except OSError as error:
        raise ImageError(f"cannot look at {path}: {error.strerror}; {_FIX}") from None
    if transport == "oci":
        return transport, DirectoryFiles(path, reference, _FIX), name
    return transport, TarFiles(path, reference, _FIX), name


def _read(reference: str, with_layers: bool, platform: str | None = None, disktype: str | None = None,
          ) -> tuple[Image, list[LayerBlob]]:
    """The image the reference names, and (`with_layers`) its layers held open — the caller closes them."""
    from cdisk.core.oci import docker_archive, layout
    from cdisk.core.oci.files import field_of, need

    transport, files, name = _open(reference)
    layers: list[LayerBlob] = []
    # The docker-archive ID is its config's name (64 hex digits, checked); the find-versus-save check below
    # compares that, and for an OCI layout the config's digest.
    try:
        if transport == "docker-archive":
            archived = docker_archive.choose(files, name)
            config, image_id, digest, layers = archived.config, archived.image_id, "", archived.layers
        else:
            chosen = layout.choose(files, name, platform, disktype)
            config, image_id, digest = chosen.image_config, chosen.image_id, chosen.digest
            if with_layers:
                layers = layout.manifest_layers(files, chosen.manifest, chosen.artifact)
        diff_ids = tuple(need(d, str, "a diff ID", files)
                         for d in field_of(field_of(config, "rootfs", dict, files), "diff_ids", list, files))
        if not with_layers:
            close_blobs(layers)
            layers = []
    except BaseException:
        close_blobs(layers)
        raise
    finally:
        files.close()
    if not image_id:
        close_blobs(layers)
        raise ImageError(f"{reference} names no config for its image; {_FIX}")
    # Every blob of a file is checked against its digest before anything it held is published (`layers.digests`).
    layers = [replace(blob, outside=True, tar_digest=transport == "docker-archive") for blob in layers]
    image = Image(reference=reference, id=image_id, digest=digest, architecture=str(config.get("architecture", "")),
                  size=0, layers=diff_ids, engine="file", platform=platform or "", disktype=disktype or "",
                  os=str(config.get("os", "")), variant=str(config.get("variant", "")))
    return image, layers


class Files:
    """Image files as an engine (`seam.Engine`): found where the reference points, never pulled."""

    name = "file"
    mounts = False
    copies = False  # its layers are read where they lie: no temp dir
    stores = False
    cannot_mount = "an image file cannot be mounted; use --method save (or auto)"

    def available(self) -> bool:
        return True

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        return self.find_image(ImageRequest(reference), progress)

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        image, _ = _read(request.reference, with_layers=False, platform=request.platform, disktype=request.disktype)
        progress.stage(f"found {image.id[:12]} in {request.reference}")
        return image

    def mount(self, image: Image) -> AbstractContextManager[str]:
        raise UsageError(self.cannot_mount)

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        """The layers where they lie, held open: the image found before, unless the file changed meanwhile."""
        now, layers = _read(image.reference, with_layers=True, platform=image.platform or None,
                            disktype=image.disktype or None)
        if now.id != image.id:
            close_blobs(layers)
            raise ImageError(f"{image.reference} changed while cdisk read it; run cdisk again")
        return layers

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        raise UsageError("an image file needs no user namespace; use --method save (or auto)")

    def load(self, archive: Path) -> None:
        raise UsageError("image files have no store to load into; write one with --output")

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        """`skopeo copy --all` of the image file `source` (every platform of an index) to `ref`."""
        from cdisk.core.engines.skopeo import copy_to_registry

        copy_to_registry(source, ref, tls_verify)


FILES = Files()
