"""`cdisk ls`: what an image holds, judged but not converted.

It reads the saved layers' tar metadata and the candidates' headers only; a hostile candidate is
described with the reason it would be refused, never opened through anything on the host.

Judging is bounded, however many candidates an image holds: candidates whose data lie at the same
place (hard links, a file seen through several links) are judged once; every distinct disk's header
is checked (`formats.detect_format`, the checks `convert` makes first), and qemu-img confirms only the
first `QEMU_IMG_JUDGED` distinct disks that pass it. The rest say they were judged by header only. Of
compressed layers, only the heads of the first `wanted.COPIES` candidates are copied out (one reading of each
layer); the others are listed as not judged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cdisk.core.disk import formats
from cdisk.core.disk.candidates import list_candidates
from cdisk.core.disk.inspection import inspect_disk
from cdisk.core.errors import CdiskError
from cdisk.core.progress import Progress
from cdisk.core.qemu.qemu_img import SECTOR
from cdisk.core.reading.pipeline import opened_image
from cdisk.core.request import ImageRequest, Reading, ReadRequest
from cdisk.core.sources import DiskSource

# Each qemu-img judgement costs two runs (info, check) of ~10-20 ms; this bounds `ls` to well under a second
# of qemu-img however many distinct disks an image holds.
QEMU_IMG_JUDGED = 8

# How far a candidate was judged (`ListedDisk.judged_by`).
BY_QEMU_IMG = "qemu-img"  # its header checked, then opened by qemu-img info (and check), as convert does
BY_HEADER = "header"  # its header checked only (the qemu-img bound was reached, or the header refused it)
BY_METADATA = "metadata"  # refused from the layers' metadata (a link out of the image, not a file): no byte read
BY_NOTHING = "none"  # not judged: a compressed layer's file beyond the copies its one reading kept


@dataclass(frozen=True)
class ListedDisk:
    """One candidate disk of an image. Sizes and offsets are bytes; `refused` is empty when usable.

    `judged_by` says how far it was looked at: "qemu-img", "header", "metadata" or "none" (the BY_ values).
    """

    path: str
    format: str | None
    virtual_size: int | None
    file_size: int | None
    layer: int | None
    layer_digest: str | None
    offset: int | None
    refused: str
    judged_by: str


@dataclass(frozen=True)
class Listing:
    """An image and its candidate disks; `problems` say what stops `convert` from choosing by itself."""

    image: str
    engine: str
    source: str
    id: str
    digest: str
    architecture: str
    disks: list[ListedDisk]
    problems: list[str]


@dataclass(frozen=True)
class _Judgement:
    format: str | None
    virtual_size: int | None
    refused: str
    judged_by: str


def header_virtual_size(fmt: str, source: DiskSource) -> int | None:
    """The virtual size the disk's header states, as qemu-img would report it; None where the format
    keeps it out of the first header (vhdx's metadata region, vpc's footer geometry).
    """
    header = source.read_at(0, 512)
    if fmt == "raw":
        # qemu reads a raw disk in whole sectors (a tar member is padded to them: see qemu_img.slice_node).
        return -(-source.size // SECTOR) * SECTOR
    if fmt == "qcow2" and len(header) >= 32:
        return int(struct.unpack_from(">Q", header, 24)[0])
    if fmt == "vmdk" and len(header) >= 20:
        return int(struct.unpack_from("<Q", header, 12)[0]) * SECTOR
    if fmt == "vdi" and len(header) >= 376:
        return int(struct.unpack_from("<Q", header, 368)[0])
    return None


def _judge(source: DiskSource, with_qemu_img: bool) -> _Judgement:
    try:
        fmt = formats.detect_format(source.read_at)
    except CdiskError as error:
        return _Judgement(None, None, error.message, BY_HEADER)
    if not with_qemu_img:
        return _Judgement(fmt, header_virtual_size(fmt, source), "", BY_HEADER)
    try:
        inspected = inspect_disk(source)
    except CdiskError as error:
        return _Judgement(fmt, None, error.message, BY_QEMU_IMG)
    return _Judgement(inspected.format, inspected.virtual_size, "", BY_QEMU_IMG)


def list_image(image: ImageRequest, read: ReadRequest, progress: Progress) -> Listing:
    """Describe every candidate disk under /disk/ of the image, from its saved layers (offsets exist only there).
    """
    disks: list[ListedDisk] = []
    with opened_image(image, read, None, progress, Reading.SAVE) as opened:
        saved = opened.view
        candidates = list_candidates(saved.tree)
        progress.stage(f"judging {len(candidates)} candidate disk(s)")
        # Keyed by where the data lie: a hard link and its target are one disk, judged once.
        judged: dict[tuple[int, int, int], tuple[str, _Judgement]] = {}
        by_qemu_img = 0
        for done, candidate in enumerate(candidates):
            member = candidate.member
            if member is None:
                disks.append(ListedDisk(candidate.path, None, None, None, None, None, None, candidate.refusal,
                                        BY_METADATA))
                continue
            where = (member.layer, member.offset, member.size)
            if where not in judged and not saved.copied(member):
                # Judging it would read its layer once more: each such candidate would cost a whole layer.
                disks.append(ListedDisk(candidate.path, None, None, member.size, member.layer,
                                        saved.blobs[member.layer].digest, member.offset, "", BY_NOTHING))
                continue
            if where not in judged:
                whole = by_qemu_img < QEMU_IMG_JUDGED and not saved.partial(member)
                judgement = _judge(saved.open(candidate.path, member), whole)
                by_qemu_img += judgement.judged_by == BY_QEMU_IMG
                judged[where] = candidate.path, judgement
            first, judgement = judged[where]
            # A refusal may name the path it was judged at; the same data elsewhere says where that was.
            refused = f"same data as {first}: {judgement.refused}" if judgement.refused and first != candidate.path \
                else judgement.refused
            disks.append(ListedDisk(candidate.path, judgement.format, judgement.virtual_size, member.size,
                                    member.layer, saved.blobs[member.layer].digest, member.offset,
                                    refused, judgement.judged_by))
            progress.update(done + 1, len(candidates))
        # What is listed came from the bytes: a file source's are vouched for first (one read of each blob).
        saved.vouch()
    problems = []
    if not disks:
        problems.append("no disk file directly under /disk/: convert needs --path")
    elif len(disks) > 1:
        problems.append(f"{len(disks)} candidate disks: convert needs --path to choose one")
    found = opened.image
    return Listing(image.reference, found.engine, found.source, found.id, found.digest, found.architecture, disks,
                   problems)
