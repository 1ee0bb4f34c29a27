"""`cdisk build DISK NAME[:TAG]`: a containerDisk from a disk file, without a Containerfile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plumbum import cli

from cdisk.cli.output import OutputSwitches, report
from cdisk.core.engines.seam import NAMES
from cdisk.core.progress import Progress

if TYPE_CHECKING:
    from cdisk.core.commands.build.command import BuildResult

OUTPUTS = "oci:DIR, oci-archive:FILE or docker-archive:FILE"


def summary(result: BuildResult) -> str:
    pushed = f"; pushed to {result.pushed}" if result.pushed else ""
    iso = " (an ISO 9660 image: attach it to the VM as a cdrom disk)" if result.iso9660 else ""
    return (f"built {result.image} ({result.image_id[:12]}) into {result.destination}: {result.format} disk of "
            f"{result.virtual_size} bytes{iso}, layer {result.layer_size} bytes ({result.layer_compression}) for "
            f"{', '.join(result.platforms)}{pushed}")


class Build(OutputSwitches):
    """Build a containerDisk from DISK (raw, qcow2, …): /disk/disk.img owned 107:107, the KubeVirt convention."""

    SYNOPSIS = ("DISK NAME[:TAG]",)

    engine = cli.SwitchAttr(["--engine"], cli.Set(*NAMES), default=NAMES[0],
                            help="The engine to load the image into (unless --output)")
    output = cli.SwitchAttr(["--output"], str, default=None, argname="DEST",
                            help=f"Write the image to DEST: {OUTPUTS}, instead of an engine")
    out_format = cli.SwitchAttr(["--format"], cli.Set("qcow2", "raw"), default=None,
                                help="The disk's format in the image (default: as DISK is; raw and qcow2 stay, "
                                     "other formats become qcow2)")
    raw = cli.Flag(["--raw"], help="DISK is a raw disk even if its first bytes look like a compressed file, an "
                                   "archive or text (it must still be whole 512-byte sectors)")
    compress = cli.Flag(["-c", "--compress"], help="qcow2 with compressed clusters (as most containerDisks ship)")
    layer_compression = cli.SwitchAttr(["--layer-compression"], cli.Set("none", "gzip", "zstd"), default=None,
                                       help="How the layer is compressed (default: gzip for oci and oci-archive "
                                            "outputs; none for an engine, which stores layers uncompressed, and "
                                            "for docker-archive)")
    platforms = cli.SwitchAttr(["--platform"], str, list=True, argname="OS/ARCH[/VARIANT]",
                               help="OS/ARCH[/VARIANT] the image says it is for (default: this host's); several make "
                                    "an image index (with --push, or an oci/oci-archive --output)")
    push = cli.SwitchAttr(["--push"], str, default=None, argname="REF",
                          help="Also push to REF: by the engine it was loaded into, else by skopeo")
    tls_verify = cli.SwitchAttr(["--tls-verify"], cli.Set("true", "false"), default=None,
                                help="Require HTTPS and a valid certificate when pushing (default: as "
                                     "registries.conf says for the registry, like podman push)")
    labels = cli.SwitchAttr(["--label"], str, list=True, argname="KEY=VALUE", help="A label KEY=VALUE (repeatable)")
    instancetype = cli.SwitchAttr(["--instancetype"], str, default=None, argname="NAME",
                                  help="KubeVirt's default instancetype for VMs of this disk (e.g. u1.medium)")
    preference = cli.SwitchAttr(["--preference"], str, default=None, argname="NAME",
                                help="KubeVirt's default preference for VMs of this disk (e.g. fedora)")
    tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None, argname="DIR",
                            help="Where the layer is written before it goes out (default: beside --output, else "
                                 "$TMPDIR or /var/tmp)")

    def main(self, disk: str, name: str) -> int:
        from cdisk.core.commands.build.command import BuildRequest, build
        from cdisk.core.errors import UsageError

        def work(progress: Progress) -> BuildResult:
            labels = []
            for label in self.labels:
                key, sep, value = label.partition("=")
                if not key or not sep:
                    raise UsageError(f"--label {label}: write KEY=VALUE")
                labels.append((key, value))
            request = BuildRequest(disk, name, self.output, str(self.engine),
                                   str(self.out_format) if self.out_format else None, bool(self.compress),
                                   str(self.layer_compression) if self.layer_compression else None,
                                   tuple(self.platforms), tuple(labels), self.instancetype, self.preference,
                                   str(self.tmpdir) if self.tmpdir else None, self.push,
                                   None if self.tls_verify is None else self.tls_verify == "true", bool(self.raw))
            return build(request, progress)

        return report(self, work, summary)
