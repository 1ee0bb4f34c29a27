"""`cdisk convert`: an image's disk, read in place, written to a file or block device."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

from cdisk.core import clone, target
from cdisk.core.engines import choice
from cdisk.core.engines.seam import Engine, Image
from cdisk.core.errors import TargetError, ToolError, UserNamespaceUnavailable
from cdisk.core.progress import Progress
from cdisk.core.qemu import qemu_img
from cdisk.core.qemu.output_formats import FORMATS, data_bound, suffix_mismatch
from cdisk.core.reading import userns
from cdisk.core.reading.methods import choose_reading, falling_back
from cdisk.core.reading.pipeline import OpenedDisk, opened_disk, resolve
from cdisk.core.request import ImageRequest, Method, Reading, ReadRequest, WriteRequest, check_write
from cdisk.core.sources import DiskSource
from cdisk.core.sources.copied import CopiedFile
from cdisk.core.sources.in_place import InPlaceFile
from cdisk.core.sources.tar_member import TarMember


@dataclass(frozen=True)
class Written:
    """What writing the target did: the disk it read (path in the image, format, size) and how."""

    disk: str
    source_format: str
    virtual_size: int
    reading: Reading
    copy: str = "qemu-img"  # how the bytes got there: "qemu-img", "reflink" (a clone), "link" (named)


@dataclass(frozen=True)
class ConvertResult:
    """What was done; the fields of `--json` output."""

    image: str
    engine: str
    source: str
    image_id: str
    digest: str
    method: str
    disk: str
    source_format: str
    virtual_size: int
    target: str
    target_format: str
    seconds: float
    copy: str


def convert(image: ImageRequest, read: ReadRequest, write: WriteRequest, progress: Progress) -> ConvertResult:
    """Convert the disk of `image` into `write.target`.

    Raises:
        CdiskError: any problem the operator can fix; nothing is left at the target path.
    """
    started = time.monotonic()
    check_write(image.reference, write)  # a format qemu-img cannot write costs no pull either
    mismatch = suffix_mismatch(write.target, write.out_format)
    if mismatch:
        progress.warn(mismatch)
    planned = target.plan_target(write.target, write.force, write.out_format, write.target_is_zero)
    found = resolve(image, progress)[1]
    written = write_disk(found, read, write, planned, progress)
    return ConvertResult(image=image.reference, engine=found.engine, source=found.source, image_id=found.id,
                         digest=found.digest,
                         method=written.reading.method, disk=written.disk,
                         source_format=written.source_format, virtual_size=written.virtual_size,
                         target=planned.path, target_format=write.out_format,
                         seconds=round(time.monotonic() - started, 3), copy=written.copy)


def write_disk(image: Image, read: ReadRequest, write: WriteRequest, planned: target.Target, progress: Progress,
               engine: Engine | None = None) -> Written:
    """Write the disk of a resolved image into a planned target (convert and refresh both end here).

    A rootless mount runs as a child in the engine's user namespace, on the same typed job; `auto` falls
    back to the save method only when that child cannot be started at all. `engine` replaces the one the
    image names (a test's own engine).
    """
    chosen = engine or choice.of(image)
    reading = choose_reading(read.method, writes=True, image=image, engine=chosen)
    return falling_back(read.method, reading, lambda by: _write_by(image, read, write, planned, by, progress, chosen),
                        True, chosen, progress)


def _write_by(image: Image, read: ReadRequest, write: WriteRequest, planned: target.Target, reading: Reading,
              progress: Progress, engine: Engine) -> Written:
    """The write by `reading`; a rootless mount in a child in the user namespace, or (`auto`, where no such
    child can start) by the save method."""
    if reading is Reading.MOUNT_IN_USERNS:
        job = {"image": asdict(image), "read": _plain(asdict(read)), "write": asdict(write),
               "target": asdict(planned)}
        try:
            return _written(userns.run(engine, f"{__name__}:in_user_namespace", job, progress))
        except UserNamespaceUnavailable as error:
            if read.method is not Method.AUTO:
                raise
            progress.stage(f"{error.reason}: falling back to the save method")
            reading = Reading.SAVE
    return _write(image, read, write, planned, reading, progress, engine)


def in_user_namespace(job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The job `write_disk` hands to its child in the user namespace: the same write, mounted there."""
    image = Image(**{**job["image"], "layers": tuple(job["image"]["layers"]),
                     "layer_dirs": tuple(job["image"]["layer_dirs"])})
    read = ReadRequest(**{**job["read"], "method": Method(job["read"]["method"])})
    written = _write(image, read, WriteRequest(**job["write"]), target.Target(**job["target"]), Reading.MOUNT,
                     progress, choice.of(image))
    return {**asdict(written), "reading": Reading.MOUNT_IN_USERNS.value}


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Method) else v for k, v in fields.items()}


def _written(fields: dict[str, Any]) -> Written:
    return Written(**{**fields, "reading": Reading(fields["reading"])})


def _raw_data_bound(disk: OpenedDisk, block: int) -> int:
    """At most what a raw target of `disk` takes on a filesystem of `block`-byte blocks.

    Each cluster qemu-img check counted allocated holds at most one cluster of data (a compressed one too),
    and lands in whole blocks of the target: qemu-img writes at least 4 KiB around any non-zero byte
    (`-S 4k`), the filesystem allocates whole blocks. Plus 1 MiB for the file's own metadata.
    """
    if disk.allocation is None:
        return disk.virtual_size
    clusters, cluster_size = disk.allocation
    return min(disk.virtual_size, clusters * max(cluster_size, block, 4096) + (1 << 20))


def _room_needed(disk: OpenedDisk, write: WriteRequest, planned: target.Target) -> tuple[target.Measure, int]:
    """What the target will take on disk, and the length of the file qemu-img will write."""
    if planned.is_block:
        return target.Measure(0, 0), 0
    out_format = write.out_format
    if out_format == "raw":
        # A raw file is as long as the disk but sparse: when the whole length fits, so does the data; and
        # when what qemu-img check counted allocated fits, so does the data too. Only then is qemu-img
        # measure (one more sandboxed run that reads all allocation metadata) not worth running.
        free, block = _free_space(planned)
        if free >= _raw_data_bound(disk, block):
            return target.Measure(0, 0), disk.virtual_size
        # measure reports a raw file's whole length; the qcow2 measure is what its data takes.
        return qemu_img.measure(disk.spec, "qcow2", disk.source.pass_fds), disk.virtual_size
    chosen = FORMATS[out_format]
    if chosen.measurable:
        needed = qemu_img.measure(disk.spec, out_format, disk.source.pass_fds)
        return needed, needed.required
    return _estimated(disk, write, planned)


def _free_space(planned: target.Target) -> tuple[int, int]:
    with target.os_errors(planned.directory):
        return target.free_bytes(planned.directory), os.statvfs(planned.directory).f_bsize


def _estimated(disk: OpenedDisk, write: WriteRequest, planned: target.Target) -> tuple[target.Measure, int]:
    """The room of a format qemu-img cannot measure (vmdk, vhdx, vpc, vdi, qed, parallels): its `Layout` over the
    disk's data, counted in the format's units. First from what qemu-img check counted allocated (a raw disk: all
    of it); where that does not fit, also from a qcow2 measure whose clusters are the format's units (its own
    metadata, a few clusters, counted as data: a bound too, tighter where small clusters share a unit).

    The file's length is taken as the room: a sparse format's file may be longer, which only a filesystem's
    limit on a file's length (the probe in `check_room`) would mind.
    """
    layout = FORMATS[write.out_format].layout_of(write.compressed)
    size = disk.virtual_size
    cheap = layout.room(size, data_bound(size, layout.unit, disk.allocation))
    if _free_space(planned)[0] >= cheap:
        return target.Measure(cheap, layout.room(size, size)), cheap
    # qcow2's clusters: 512 bytes to 2 MiB, as every unit of the table is. Both are bounds: the lesser holds.
    data = qemu_img.measure(disk.spec, "qcow2", disk.source.pass_fds, (f"cluster_size={layout.unit}",)).required
    needed = min(cheap, layout.room(size, data))
    return target.Measure(needed, layout.room(size, size)), needed


def _check_room(disk: OpenedDisk, write: WriteRequest, planned: target.Target) -> None:
    needed, length = _room_needed(disk, write, planned)
    target.check_room(planned, disk.virtual_size, needed, length)


def _copied_as_asked(disk: OpenedDisk, write: WriteRequest, planned: target.Target) -> CopiedFile | None:
    """The disk's decompressed copy when it already is the file asked for: raw, whole, made in the target's
    directory (its group, its security label: as if written there), to become a raw file. Naming it takes no
    room and no time; anything else is converted.
    """
    source = disk.source
    if not isinstance(source, CopiedFile) or not source.linkable or not source.complete:
        return None
    if (disk.format, write.out_format, write.compressed, planned.is_block) != ("raw", "raw", False, False):
        return None
    with target.os_errors(planned.directory):
        same = os.path.samefile(source.directory, planned.directory)
    return source if same else None


# Formats whose file is the whole disk and nothing else (judged: no backing, no data file): a clone of it is
# the very file qemu-img would have to rewrite.
_CLONABLE = frozenset({"raw", "qcow2"})


def _cloned(disk: OpenedDisk, write: WriteRequest, planned: target.Target, output: str) -> bool:
    """Clone the disk's bytes into `output` (no byte read or written, no room taken) when they already are the
    file asked for: the format asked, uncompressed, a file target. False, with `output` left empty, wherever
    the file system cannot (ext4, another file system): then qemu-img converts, as always.

    Not copy_file_range: where it cannot clone it copies every byte, zeros included, into a file that qemu-img
    would have left sparse. No holes are punched in the clone: finding the zeros reads the whole disk, the cost
    the clone avoids (the clone shares the store's blocks, so it takes no room either).
    """
    if not write.reflink or planned.is_block or write.compressed or disk.format != write.out_format \
            or disk.format not in _CLONABLE:
        return False
    with target.os_errors(output):
        fd = os.open(output, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if not _clone(disk.source, fd):
            return False
        if disk.format == "raw" and os.fstat(fd).st_size < disk.virtual_size:
            os.ftruncate(fd, disk.virtual_size)  # qemu-img rounds a raw disk up to 512 bytes: so does the clone
        return True
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL (ext4, tmpfs, overlay, another file system), ENOSPC: qemu-img
        os.ftruncate(fd, 0)
        return False
    finally:
        os.close(fd)


def _clone(source: DiskSource, fd: int) -> bool:
    """Share `source`'s blocks into the empty file `fd`: a whole file by FICLONE; a member of a tar by
    FICLONERANGE of its whole blocks, the last partial block copied — possible only when the member's data start
    on a block of the file system, as the target's do (in the layers podman and docker write they start at byte
    1024; in those `cdisk build` writes, on a 4 KiB block). Raises OSError where the file system cannot."""
    if isinstance(source, InPlaceFile):
        fcntl.ioctl(fd, clone.FICLONE, source.fd)
        return True
    if not isinstance(source, TarMember) or not source.fds:
        return False
    block = os.fstatvfs(fd).f_bsize
    whole = source.size - source.size % block
    if source.offset % block or not whole:
        return False
    clone.clone_range(fd, source.fds[0], source.offset, whole, 0)
    tail = source.read_at(whole, block)
    if len(tail) != source.size - whole:
        raise OSError(errno.EIO, "the tar ended early")  # cut meanwhile: qemu-img says so
    written = 0
    while written < len(tail):
        written += os.pwrite(fd, tail[written:], whole + written)
    return True


def _write(image: Image, read: ReadRequest, write: WriteRequest, planned: target.Target, reading: Reading,
           progress: Progress, engine: Engine) -> Written:
    with ExitStack() as stack:
        disk = stack.enter_context(opened_disk(image, read, planned, progress, reading, engine))
        if planned.is_block:
            disk.vouch()  # a device is written in place: nothing unvouched may reach it
        output = stack.enter_context(target.writing(planned, write.keep, write.durable))
        written = _write_into(disk, write, planned, reading, output, progress)
        # Before TARGET takes its name: a file source's blob that fails its digest leaves nothing there.
        disk.vouch()
        return written


def _write_into(disk: OpenedDisk, write: WriteRequest, planned: target.Target, reading: Reading, output: str,
                progress: Progress) -> Written:
    """The disk written into `output` (a temp name beside a file TARGET, or the device): named, cloned or
    converted."""
    copied = _copied_as_asked(disk, write, planned)
    if copied is not None:
        with target.os_errors(output):
            os.unlink(output)
        why = copied.link_as(output, target.new_file_mode())
        if why is None:
            progress.stage("the decompressed disk is the raw file asked for: named, not converted")
            return Written(disk.source.image_path, disk.format, disk.virtual_size, reading, "link")
        progress.stage(f"cannot name the decompressed disk as the target ({why}): converting it")
        with target.os_errors(output):
            os.close(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    if _cloned(disk, write, planned, output):
        progress.stage("the disk is the file asked for, on the same file system: cloned (reflink), not copied")
        return Written(disk.source.image_path, disk.format, disk.virtual_size, reading, "reflink")
    _check_room(disk, write, planned)  # a clone takes none: checked only now
    progress.stage("converting")
    options = qemu_img.ConvertOptions(write.out_format, write.compressed, existing_target=planned.is_block,
                                      target_is_zero=write.target_is_zero, compressed_source=disk.compressed)
    try:
        qemu_img.convert(disk.spec, output, options, progress, disk.source.pass_fds)
    except ToolError as error:
        if "No space left" in error.stderr:
            raise TargetError(f"{planned.directory} ran out of space while writing; free some space or "
                              "choose another target (nothing was left behind)") from None
        raise
    return Written(disk.source.image_path, disk.format, disk.virtual_size, reading)
