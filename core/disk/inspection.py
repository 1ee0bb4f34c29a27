"""A disk judged before anything is written: its format told by its bytes, a header confirmed by qemu-img."""

from __future__ import annotations

from dataclasses import dataclass

from cdisk.core.disk import formats
from cdisk.core.errors import UnsafeImageError
from cdisk.core.qemu import qemu_img
from cdisk.core.sources import DiskSource


@dataclass(frozen=True)
class InspectedDisk:
    """A disk that passed every check: its format as told by its bytes and (past raw) as qemu-img read it.

    `allocation`: the clusters qemu-img check counted allocated, and their size (qcow2; None elsewhere);
    `compressed`: whether any cluster is compressed.
    """

    source: DiskSource
    format: str
    virtual_size: int
    spec: str
    allocation: tuple[int, int] | None = None
    compressed: bool = False


def inspect_disk(source: DiskSource) -> InspectedDisk:
    """Tell the disk's format from its bytes, refuse what could escape the image, and let a
    resource-limited qemu-img confirm it.
    """
    fmt = formats.detect_format(source.read_at)
    spec = qemu_img.image_spec(fmt, source.node())
    if fmt == "raw":  # no header to confirm: qemu reads the bytes as they are, their length rounded to a sector
        return InspectedDisk(source, fmt, -(-source.size // qemu_img.SECTOR) * qemu_img.SECTOR, spec)

    def no_other_file(info: qemu_img.ImageInfo) -> None:
        if info.backing or info.data_file:
            raise UnsafeImageError(f"{source.image_path} names another file ({info.backing or info.data_file}); "
                                   f"cdisk refuses it: {formats.REFUSE_HINT}")

    # One run's time, not two: check needs nothing of info's answer, and reads only what info reads.
    info, clusters = qemu_img.info_and_check(spec, source.pass_fds, no_other_file)
    allocation = None
    if clusters.allocated is not None and info.cluster_size:
        allocation = clusters.allocated, info.cluster_size
    return InspectedDisk(source, fmt, info.virtual_size, spec, allocation, clusters.compressed)
