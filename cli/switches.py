"""Switches the commands share, grouped by what a command touches: the image, its disk, a target. Each group
turns its switches into the core value it stands for (`cdisk.core.request`), whose enums are the allowed values.
"""

from __future__ import annotations

from plumbum import cli

from cdisk.cli.output import OutputSwitches
from cdisk.core.engines.seam import AUTO, NAMES
from cdisk.core.request import ImageRequest, Method, Pull, ReadRequest, WriteRequest, values


class ImageSwitches(OutputSwitches):
    """Switches of every command that finds (and may pull) an image."""

    pull = cli.SwitchAttr(["--pull"], cli.Set(*(p.value for p in Pull if p is not Pull.NEWER)),
                          default=Pull.MISSING.value, overridable=True,
                          help="When to pull IMAGE, as podman's --pull (default: missing)")
    # Bare `--tls-verify` is `--tls-verify=true`, as podman has it (help.Command.BARE_VALUES).
    tls_verify = cli.SwitchAttr(["--tls-verify"], cli.Set("true", "false"), default=None,
                                help="Require HTTPS and a valid certificate when pulling; alone it means true "
                                     "(default: as registries.conf says for the registry, like podman pull)")
    engine = cli.SwitchAttr(["--engine"], cli.Set(AUTO, *NAMES), default=AUTO,
                            help="Whose image store to use: auto (default) takes the engine that holds IMAGE "
                                 "(podman first), else the one installed and answering (podman first)")
    platform = cli.SwitchAttr(["--platform"], str, default=None, argname="OS/ARCH[/VARIANT]",
                              help="The image to take from a multi-platform image or index, e.g. linux/arm64 "
                                   "(default: this host's)")
    disktype = cli.SwitchAttr(["--disktype"], str, default=None, argname="TYPE",
                              help="Of podman machine's disk artifacts (one per hypervisor), the one of this type "
                                   "(default: qemu; applehv, hyperv, …)")
    tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None, argname="DIR", overridable=True,
                            help="Where temporary copies go: the save method's layers, a compressed layer's "
                                 "disk (default: $TMPDIR, else /var/tmp)")

    def image_request(self, reference: str) -> ImageRequest:
        """Which image these switches ask for, and how to get it."""
        tls = None if self.tls_verify is None else self.tls_verify == "true"
        return ImageRequest(reference, Pull(str(self.pull)), tls, str(self.engine),
                            str(self.platform) if self.platform else None,
                            str(self.disktype) if self.disktype else None)

    def read_request(self) -> ReadRequest:
        """How these switches ask to read the disk."""
        return ReadRequest(tmpdir=str(self.tmpdir) if self.tmpdir else None)


class DiskSwitches(ImageSwitches):
    """Switches of every command that reads the image's disk."""

    method = cli.SwitchAttr(["--method"], cli.Set(*values(Method)), default=Method.AUTO.value,
                            help="How to read the disk: layers (in the store's layer directories, stacked "
                                 "by cdisk: no copy, no mount), mount (podman only: in its store, no copy), "
                                 "save (in a saved copy of the layers); auto (default) reads the layer "
                                 "directories, else mounts, else saves")
    disk_path = cli.SwitchAttr(["--path"], str, default=None, argname="PATH",
                               help="The disk's path in the image, e.g. /disk/x.qcow2")

    def read_request(self) -> ReadRequest:
        return ReadRequest(Method(str(self.method)), self.disk_path, super().read_request().tmpdir)


class TargetSwitches(DiskSwitches):
    """Switches of every command that reads the image's disk beside a TARGET (convert, refresh, verify)."""

    tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None, argname="DIR",
                            help="Where temporary copies go: the save method's layers, a compressed layer's "
                                 "disk (default: beside a file TARGET, else $TMPDIR, else /var/tmp)")


class WriteSwitches(TargetSwitches):
    """Switches of every command that writes TARGET."""

    out_format = cli.SwitchAttr(["-O", "--output-format"], str, default="raw",
                                help="Format of TARGET: raw, qcow2, vmdk, vhdx, vpc, vdi, qed or parallels (a block "
                                     "device: raw only)")
    compress = cli.Flag(["-c", "--compress"], help="Compress TARGET: qcow2, or vmdk (as streamOptimized)")
    force = cli.Flag(["-f", "--force"], help="Replace an existing TARGET (a block device is written in place); not "
                                             "qemu-img's -f: the output format is -O", overridable=True)

    no_reflink = cli.Flag(["--no-reflink"], help="Never clone the store's file into TARGET (XFS, btrfs): always "
                                                 "convert with qemu-img")

    def write_request(self, target: str, keep: int = 0, durable: bool = False,
                      target_is_zero: bool = False) -> WriteRequest:
        """How these switches ask to write TARGET."""
        return WriteRequest(target, self.out_format, bool(self.compress), bool(self.force), keep, target_is_zero,
                            durable, not self.no_reflink)
