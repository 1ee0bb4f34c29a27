"""What an operator asks of cdisk, as three small values for three concerns: which image and how to get it,
how to read its disk, how to write the target. The CLI builds them from its switches; every command of
core takes the ones it needs, and the allowed values live here alone — with `Reading`, what a `Method` comes to
once resolved for this process (`reading.methods.choose_reading`), which the user-namespace child is handed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdisk.core.errors import UsageError

if TYPE_CHECKING:
    from cdisk.core.qemu.output_formats import OutputFormat


class Pull(enum.Enum):
    """When to pull the image, as podman's `--pull`."""

    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"
    NEWER = "newer"


class Method(enum.Enum):
    """How the operator asked to read the disk."""

    AUTO = "auto"
    MOUNT = "mount"
    SAVE = "save"
    LAYERS = "layers"


class Reading(enum.Enum):
    """How the disk is read in the end: `Method.AUTO` resolved for this process."""

    MOUNT = "mount"  # in the engine's store, mounted by this process
    MOUNT_IN_USERNS = "mount-in-userns"  # the same, by a child in rootless podman's user namespace
    SAVE = "save"  # in a saved copy of the layers
    LAYERS = "layers"  # in the engine's layer directories, stacked by cdisk: no mount, no copy

    @property
    def method(self) -> str:
        """The method's name as the operator knows it (a mount in the user namespace is a mount)."""
        return "mount" if self is Reading.MOUNT_IN_USERNS else self.value


@dataclass(frozen=True)
class ImageRequest:
    """Which image, from which engine's store (`auto`: see `engines.choice.find`), and how to get it. `tls_verify`
    None leaves HTTPS checks to the engine's own registry settings.
    """

    reference: str
    pull: Pull = Pull.MISSING
    tls_verify: bool | None = None
    engine: str = "auto"
    platform: str | None = None  # OS/ARCH[/VARIANT]; None: this host's
    disktype: str | None = None  # among podman machine's disk artifacts for the platform, this type; None: qemu


@dataclass(frozen=True)
class ReadRequest:
    """How to read the disk: the method, the disk's path in the image (None: the one under /disk/), and
    where the save method may keep its temp data (None: the one rule of `target.temp_parent`).
    """

    method: Method = Method.AUTO
    disk_path: str | None = None
    tmpdir: str | None = None


@dataclass(frozen=True)
class WriteRequest:
    """How to write the target. `durable` syncs before the rename (refresh); `keep` previous versions."""

    target: str
    out_format: str = "raw"
    compressed: bool = False
    force: bool = False
    keep: int = 0
    target_is_zero: bool = False
    durable: bool = False
    reflink: bool = True


def check_write(image: str, write: WriteRequest) -> OutputFormat:
    """The format `write` asks for, checked first, before any pull or work (convert and refresh call it).

    qemu-img's users type `-f FMT` for the source's format; cdisk's -f is --force. With --force given and IMAGE or
    TARGET a bare format's name, that is what happened: refused, rather than a pull of an image named `qcow2` or
    a file named so. A file of that name is written as ./qcow2.

    Raises:
        UsageError: a format cdisk does not write, `-c` where it cannot compress, or -f taken for a format.
    """
    # Here, not at the top: every command's start-up (--help included) imports this module, and the table's
    # dataclasses cost ~2.5 ms to build.
    from cdisk.core.qemu.output_formats import is_format_name, output_format

    if write.force:
        for what, word in (("IMAGE", image), ("TARGET", write.target)):
            if is_format_name(word):
                way_out = "" if what == "IMAGE" else f", or give ./{word} for a file of that name"
                raise UsageError(f"{what} is {word!r}, a format's name after -f, but cdisk's -f is --force (the "
                                 f"disk's own format is read from the image; the output format is -O FMT); drop -f "
                                 f"{word}{way_out}")
    return output_format(write.out_format, write.compressed)


def values(kind: type[enum.Enum]) -> list[str]:
    """The values of an enum, as a switch accepts them."""
    return [str(member.value) for member in kind]
