"""`cdisk ls`: what an image holds, judged but not converted.

It reads the saved layers' tar metadata and the candidates' headers only; a hostile candidate is
described with the reason it would be refused, never opened through anything on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdisk.core.disks import list_candidates
from cdisk.core.errors import CdiskError
from cdisk.core.inspection import inspect_disk
from cdisk.core.podman import Image
from cdisk.core.progress import Progress
from cdisk.core.sources import saved_layers, system_tmpdir


@dataclass(frozen=True)
class ListedDisk:
    """One candidate disk of an image. Sizes and offsets are bytes; `refused` is empty when usable."""

    path: str
    format: str | None
    virtual_size: int | None
    file_size: int | None
    layer: int | None
    layer_digest: str | None
    offset: int | None
    refused: str


@dataclass(frozen=True)
class Listing:
    """An image and its candidate disks; `problems` say what stops `convert` from choosing by itself."""

    image: str
    id: str
    digest: str
    architecture: str
    disks: list[ListedDisk]
    problems: list[str]


def list_image(reference: str, image: Image, tmpdir: str | None, progress: Progress) -> Listing:
    """Describe every candidate disk under /disk/ of a resolved image (layers saved under `tmpdir`)."""
    progress.stage("reading the image's layers (save method)")
    disks: list[ListedDisk] = []
    with saved_layers(image, tmpdir or system_tmpdir()) as saved:
        for candidate in list_candidates(saved.tree):
            member = candidate.member
            if member is None:
                disks.append(ListedDisk(candidate.path, None, None, None, None, None, None, candidate.refusal))
                continue
            layer = saved.blobs[member.layer]
            fmt, virtual_size, refused = None, None, ""
            try:
                inspected = inspect_disk(saved.source(candidate.path, member))
                fmt, virtual_size = inspected.format, inspected.virtual_size
            except CdiskError as error:
                refused = error.message
            disks.append(ListedDisk(candidate.path, fmt, virtual_size, member.size, member.layer,
                                    f"sha256:{layer.name}", member.offset, refused))
    problems = []
    if not disks:
        problems.append("no disk file directly under /disk/: convert needs --path")
    elif len(disks) > 1:
        problems.append(f"{len(disks)} candidate disks: convert needs --path to choose one")
    return Listing(reference, image.id, image.digest, image.architecture, disks, problems)
