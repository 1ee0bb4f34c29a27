"""`cdisk convert`: an image's disk, read in place, written to a file or block device."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

from cdisk.core import podman, qemu_img, sources, target, userns
from cdisk.core.errors import TargetError, ToolError
from cdisk.core.inspection import InspectedDisk, inspect_disk
from cdisk.core.progress import Progress


@dataclass(frozen=True)
class ConvertRequest:
    """What the operator asked for."""

    image: str
    target: str
    out_format: str = "raw"
    compressed: bool = False
    force: bool = False
    pull: str = "missing"
    method: str = "auto"
    disk_path: str | None = None
    tmpdir: str | None = None
    tls_verify: bool | None = None  # None: registries.conf decides, as for `podman pull`
    keep: int = 0
    target_is_zero: bool = False
    durable: bool = False


@dataclass(frozen=True)
class ConvertResult:
    """What was done; the fields of `--json` output."""

    image: str
    image_id: str
    digest: str
    method: str
    disk: str
    source_format: str
    virtual_size: int
    target: str
    target_format: str
    seconds: float


def _room_needed(disk: InspectedDisk, out_format: str, plan: target.Target) -> tuple[qemu_img.Measure, int]:
    """What the target will take on disk, and the length of the file qemu-img will write."""
    if plan.is_block:
        return qemu_img.Measure(0, 0), 0
    if out_format == "raw":
        # A raw file is as long as the disk but sparse: when the whole length fits, so does the data,
        # and qemu-img measure (which reads all allocation metadata) is not worth running.
        with target.os_errors(plan.directory):
            free = target.free_bytes(plan.directory)
        if free >= disk.virtual_size:
            return qemu_img.Measure(0, 0), disk.virtual_size
        # measure reports a raw file's whole length; the qcow2 measure is what its data takes.
        return qemu_img.measure(disk.spec, "qcow2", disk.source.pass_fds), disk.virtual_size
    needed = qemu_img.measure(disk.spec, out_format, disk.source.pass_fds)
    return needed, needed.required


def convert(request: ConvertRequest, progress: Progress) -> ConvertResult:
    """Convert the disk of `request.image` into `request.target`.

    Raises:
        CdiskError: any problem the operator can fix; nothing is left at the target path.
    """
    started = time.monotonic()
    plan = target.plan_target(request.target, request.force, request.out_format, request.target_is_zero)
    image = podman.find_image(request.image, request.pull, progress, request.tls_verify)
    result = convert_resolved(request, image, plan, progress)
    return replace(result, image=request.image, seconds=round(time.monotonic() - started, 3))


def convert_resolved(request: ConvertRequest, image: podman.Image, plan: target.Target,
                     progress: Progress) -> ConvertResult:
    """Convert a resolved image into a planned target by the method the request asks for."""
    method = sources.choose_method(request.method)
    if method != sources.USERNS_MOUNT:
        return convert_image(request, image, plan, method, progress)
    try:
        return userns.convert_in_user_namespace(request, image, plan, progress)
    except userns.UserNamespaceUnavailable as error:
        if request.method != "auto":
            raise
        progress.stage(f"{error.message.split(';')[0]}: falling back to the save method")
        return convert_image(request, image, plan, "save", progress)


def convert_image(request: ConvertRequest, image: podman.Image, plan: target.Target, method: str,
                  progress: Progress) -> ConvertResult:
    """Convert the disk of a resolved image by `method` (mount or save) into a planned target."""
    with ExitStack() as stack:
        tmp_parent = sources.temp_parent(request.tmpdir, plan)
        source = stack.enter_context(sources.open_disk(method, image, tmp_parent, request.disk_path, progress))
        disk = inspect_disk(source)
        needed, length = _room_needed(disk, request.out_format, plan)
        target.check_room(plan, disk.virtual_size, needed, length)
        output = stack.enter_context(target.writing(plan, request.keep, request.durable))
        progress.stage("converting")
        options = qemu_img.ConvertOptions(request.out_format, request.compressed, existing_target=plan.is_block,
                                          target_is_zero=request.target_is_zero)
        try:
            qemu_img.convert(disk.spec, output, options, progress, source.pass_fds)
        except ToolError as error:
            if "No space left" in error.stderr:
                raise TargetError(f"{plan.directory} ran out of space while writing; free some space or "
                                  "choose another target (nothing was left behind)") from None
            raise
    return ConvertResult(image=request.image, image_id=image.id, digest=image.digest, method=source.method,
                         disk=source.image_path, source_format=disk.format, virtual_size=disk.virtual_size,
                         target=plan.path, target_format=request.out_format, seconds=0.0)
