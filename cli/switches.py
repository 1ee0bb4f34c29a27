"""Switches the commands share, grouped by what a command touches: the image, its disk, a target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plumbum import cli

from cdisk.cli.output import OutputSwitches

if TYPE_CHECKING:
    from cdisk.core.convert import ConvertRequest
    from cdisk.core.podman import Image
    from cdisk.core.progress import Progress


class ImageSwitches(OutputSwitches):
    """Switches of every command that finds (and may pull) an image."""

    pull = cli.SwitchAttr(["--pull"], cli.Set("missing", "always", "never"), default="missing",
                          help="When to pull IMAGE, as podman's --pull", overridable=True)
    tls_verify = cli.SwitchAttr(["--tls-verify"], cli.Set("true", "false"), default=None,
                                help="Require HTTPS and a valid certificate when pulling (default: as "
                                     "registries.conf says for the registry, like podman pull)")
    tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None,
                            help="Where the save method keeps the saved layers (default: beside a file TARGET, "
                                 "else $TMPDIR or /var/tmp)")

    @property
    def tmpdir_path(self) -> str | None:
        return str(self.tmpdir) if self.tmpdir else None

    @property
    def tls_choice(self) -> bool | None:
        """--tls-verify as given; None when absent, so that registries.conf decides."""
        return None if self.tls_verify is None else self.tls_verify == "true"

    def find_image(self, reference: str, progress: Progress) -> Image:
        """The image these switches ask for, pulled as `--pull` says."""
        from cdisk.core import podman

        return podman.find_image(reference, str(self.pull), progress, self.tls_choice)


class DiskSwitches(ImageSwitches):
    """Switches of every command that reads the image's disk."""

    method = cli.SwitchAttr(["--method"], cli.Set("auto", "mount", "save"), default="auto",
                            help="How to read the disk: mount (in podman's store, no copy), save (in a saved "
                                 "copy of the layers); auto mounts where it can")
    disk_path = cli.SwitchAttr(["--path"], str, default=None, help="The disk's path in the image, e.g. /disk/x.qcow2")


class WriteSwitches(DiskSwitches):
    """Switches of every command that writes TARGET."""

    out_format = cli.SwitchAttr(["-O", "--output-format"], str, default="raw",
                                help="Format of TARGET: raw, qcow2, vmdk, … (anything qemu-img writes)")
    compress = cli.Flag(["-c", "--compress"], help="Compress the output (qcow2)")
    force = cli.Flag(["-f", "--force"], help="Replace an existing TARGET (a block device is written in place)",
                     overridable=True)

    def request(self, image: str, target: str, keep: int = 0, durable: bool = False,
                target_is_zero: bool = False) -> ConvertRequest:
        """The ConvertRequest these switches ask for."""
        from cdisk.core.convert import ConvertRequest

        return ConvertRequest(image=image, target=target, out_format=self.out_format, compressed=self.compress,
                              force=self.force, pull=str(self.pull), method=str(self.method),
                              disk_path=self.disk_path, tmpdir=self.tmpdir_path,
                              tls_verify=self.tls_choice, keep=keep,
                              target_is_zero=target_is_zero, durable=durable)


def size_text(n: int | None) -> str:
    """Bytes as an operator reads them: 8.0 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
