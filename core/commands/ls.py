"""`cdisk ls`: what an image holds, judged but not converted.

It reads the image as `convert` does, in place (the store's layer directories, a mount, an image file's layer
tars; the save method's copy only when asked for or when nothing else can), and of the files only the
candidates' headers; a hostile candidate is described with the reason it would be refused, never opened through
anything on the host. The candidates are the files directly under /disk/; when there are none, the disk-like
files elsewhere in the image (`disk.anywhere`, bounded); with --path, the one file it names.

Judging is bounded, however many candidates an image holds: candidates whose data lie at the same
place (hard links, a file seen through several links) are judged once; every distinct disk's header
is checked (`formats.detect_format`, the checks `convert` makes first), and qemu-img confirms only the
first `QEMU_IMG_JUDGED` distinct disks that pass it. The rest say they were judged by header only. Of
compressed layers, only the heads of the first `wanted.COPIES` candidates are copied out (one reading of each
layer); the others are listed as not judged.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass

from cdisk.core.disk import formats
from cdisk.core.disk.anywhere import Search, search
from cdisk.core.disk.candidates import DiskCandidate, find_disk, list_candidates
from cdisk.core.disk.inspection import inspect_disk
from cdisk.core.disk.wanted import DISK_DIR
from cdisk.core.engines.seam import Image
from cdisk.core.errors import CdiskError, UnsafeImageError
from cdisk.core.progress import Progress
from cdisk.core.qemu.qemu_img import SECTOR
from cdisk.core.reading.methods import ImageView
from cdisk.core.reading.pipeline import OpenedImage, read_image
from cdisk.core.request import ImageRequest, Reading, ReadRequest
from cdisk.core.shell import shell_word
from cdisk.core.sources import DiskSource

# Each qemu-img judgement costs two runs (info, check) of ~10-20 ms; this bounds `ls` to well under a second
# of qemu-img however many distinct disks an image holds.
QEMU_IMG_JUDGED = 8

# Where a candidate was found (`ListedDisk.found_by`).
FOUND_UNDER_DISK = "disk"
FOUND_BY_SEARCH = "search"
FOUND_BY_PATH = "path"

# How far a candidate was judged (`ListedDisk.judged_by`).
BY_QEMU_IMG = "qemu-img"  # its header checked, then opened by qemu-img info (and check), as convert does
BY_HEADER = "header"  # its header checked only (the qemu-img bound was reached, or the header refused it)
BY_METADATA = "metadata"  # refused from the layers' metadata (a link out of the image, not a file): no byte read
BY_NOTHING = "none"  # not judged: a compressed layer's file beyond the copies its one reading kept


@dataclass(frozen=True)
class ListedDisk:
    """One candidate disk of an image. Sizes and offsets are bytes; `refused` is empty when usable.

    `judged_by` says how far it was looked at: "qemu-img", "header", "metadata" or "none" (the BY_ values);
    `found_by` where it was found: "disk" (directly under /disk/), "search" (elsewhere, by its header: see
    `disk.anywhere`) or "path" (--path). `layer`, `layer_digest` and `offset` are those of the layer tar holding
    its data where it is read at an offset (the save method, image files), else None.
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
    found_by: str = "disk"


@dataclass(frozen=True)
class Listing:
    """An image and its candidate disks; `problems` say what stops `convert` from choosing by itself."""

    image: str
    engine: str
    source: str
    image_id: str
    digest: str
    architecture: str
    method: str
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


def _candidates(view: ImageView, read: ReadRequest) -> tuple[list[DiskCandidate], str, Search | None]:
    """The candidates `ls` lists, where they were found ("disk", "path", "search"), and the search's result."""
    if read.disk_path:
        path = "/" + read.disk_path.strip("/")
        try:
            return [DiskCandidate(path, find_disk(view.tree, path)[1])], FOUND_BY_PATH, None
        except UnsafeImageError as refused:  # a link out of the image, a sparse member: listed as refused
            return [DiskCandidate(path, None, refused.message)], FOUND_BY_PATH, None
    candidates = list_candidates(view.tree)
    if candidates:
        return candidates, FOUND_UNDER_DISK, None
    found = search(view.tree, view.sniff)
    return [DiskCandidate(disk.path, disk.member) for disk in found.found], FOUND_BY_SEARCH, found


def _problems(disks: list[ListedDisk], found_by: str, found: Search | None) -> list[str]:
    """What stops `convert` from choosing by itself, or makes it need --path (a find cdisk refuses, qed or
    luks, is never offered as one)."""
    problems = []
    if found_by == FOUND_BY_SEARCH:
        readable = [disk for disk in disks if not disk.refused]
        if not disks:
            problems.append(f"no disk file directly under /{DISK_DIR}/, and no disk-like file elsewhere: convert "
                            "needs --path")
        elif not readable:
            problems.append(f"no disk file directly under /{DISK_DIR}/, and only disk-like files elsewhere that "
                            "cdisk does not read; rebuild the image with a raw or qcow2 disk under /disk/")
        elif len(readable) == 1:
            problems.append(f"no disk file directly under /{DISK_DIR}/: convert takes a disk elsewhere only when "
                            f"named: pass --path {shell_word(readable[0].path)}")
        else:
            problems.append(f"no disk file directly under /{DISK_DIR}/ and {len(readable)} disk-like files "
                            "elsewhere: convert needs --path to choose one")
        if found is not None and found.stopped:
            problems.append(f"{found.stopped}: other disks may lie past it")
    elif len(disks) > 1:
        problems.append(f"{len(disks)} candidate disks: convert needs --path to choose one")
    return problems


def _listed(opened: OpenedImage, read: ReadRequest, progress: Progress) -> tuple[list[ListedDisk], list[str]]:
    view = opened.view
    # Offsets exist where a file is a byte range of a layer tar (the save method, image files); in place, a file
    # is just a file.
    at_offsets = opened.reading is Reading.SAVE
    candidates, found_by, found = _candidates(view, read)
    sniffed = {disk.path: disk.sniffed for disk in found.found} if found is not None else {}
    progress.stage(f"judging {len(candidates)} candidate disk(s)")
    disks: list[ListedDisk] = []
    # Keyed by where the data lie: a hard link and its target are one disk, judged once.
    judged: dict[Hashable, tuple[str, _Judgement]] = {}
    by_qemu_img = 0
    for done, candidate in enumerate(candidates):
        member = candidate.member
        if member is None:
            disks.append(ListedDisk(candidate.path, None, None, None, None, None, None, candidate.refusal,
                                    BY_METADATA, found_by))
            continue
        layer, digest, offset = (member.layer, view.blobs[member.layer].digest, member.offset) if at_offsets \
            else (None, None, None)
        where = view.identity(member)
        if where not in judged and not view.copied(member):
            # Judging it would read its layer once more: each such candidate would cost a whole layer.
            told = sniffed.get(candidate.path)  # a disk found by the search says what its header is
            disks.append(ListedDisk(candidate.path, told.format if told else None, None, member.size, layer, digest,
                                    offset, "", BY_NOTHING, found_by))
            continue
        if where not in judged:
            whole = by_qemu_img < QEMU_IMG_JUDGED and not view.partial(member)
            with view.borrowed(candidate.path, member) as source:
                judgement = _judge(source, whole)
            by_qemu_img += judgement.judged_by == BY_QEMU_IMG
            judged[where] = candidate.path, judgement
        first, judgement = judged[where]
        # A refusal may name the path it was judged at; the same data elsewhere says where that was.
        refused = f"same data as {first}: {judgement.refused}" if judgement.refused and first != candidate.path \
            else judgement.refused
        disks.append(ListedDisk(candidate.path, judgement.format, judgement.virtual_size, member.size, layer, digest,
                                offset, refused, judgement.judged_by, found_by))
        progress.update(done + 1, len(candidates))
    # What is listed came from the bytes: a file source's are vouched for first (one read of each blob).
    view.vouch()
    return disks, _problems(disks, found_by, found)


def list_image(image: ImageRequest, read: ReadRequest, progress: Progress) -> Listing:
    """Describe every candidate disk of the image: those directly under /disk/, else the disk-like files elsewhere
    (`disk.anywhere`), or the one `read.disk_path` names; read as `convert` reads (in place where it can be).

    Raises:
        DiskNotFoundError: `read.disk_path` names nothing in the image, or no regular file.
    """
    def work(opened: OpenedImage) -> tuple[Image, Reading, list[ListedDisk], list[str]]:
        return (opened.image, opened.reading, *_listed(opened, read, progress))

    found, reading, disks, problems = read_image(image, read, progress, work)
    return Listing(image.reference, found.engine, found.source, found.id, found.digest, found.architecture,
                   reading.method, disks, problems)
