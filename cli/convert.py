"""`cdisk convert IMAGE TARGET`."""

from __future__ import annotations

from plumbum import cli

from cdisk.cli.output import OutputSwitches, report
from cdisk.core.progress import Progress


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


class Convert(OutputSwitches):
    """Convert the disk of a containerDisk IMAGE into TARGET (a file, or an existing block device)."""

    out_format = cli.SwitchAttr(["-O", "--output-format"], str, default="raw",
                                help="Format of TARGET: raw, qcow2, vmdk, … (anything qemu-img writes)")
    compress = cli.Flag(["-c", "--compress"], help="Compress the output (qcow2)")
    force = cli.Flag(["-f", "--force"], help="Replace an existing TARGET (a block device is written in place)")
    pull = cli.SwitchAttr(["--pull"], cli.Set("missing", "always", "never"), default="missing",
                          help="When to pull IMAGE, as podman's --pull")
    method = cli.SwitchAttr(["--method"], cli.Set("auto", "mount", "save"), default="auto",
                            help="How to read the disk: mount (in podman's store, no copy), save (in a saved "
                                 "copy of the layers); auto mounts where it can")
    disk_path = cli.SwitchAttr(["--path"], str, default=None, help="The disk's path in the image, e.g. /disk/x.qcow2")
    tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None,
                            help="Where the save method keeps the saved layers (default: beside TARGET)")
    tls_verify = cli.SwitchAttr(["--tls-verify"], cli.Set("true", "false"), default="true",
                                help="Require HTTPS and a valid certificate when pulling")

    def main(self, image: str, target: str) -> int:
        from cdisk.core.convert import ConvertRequest, ConvertResult, convert

        request = ConvertRequest(image=image, target=target, out_format=self.out_format,
                                 compressed=self.compress, force=self.force, pull=str(self.pull),
                                 method=str(self.method), disk_path=self.disk_path,
                                 tmpdir=str(self.tmpdir) if self.tmpdir else None,
                                 tls_verify=self.tls_verify == "true")

        def summary(result: ConvertResult) -> str:
            return (f"{result.disk} ({result.source_format}, {_size(result.virtual_size)}) of {result.image} "
                    f"-> {result.target} ({result.target_format}) in {result.seconds:.2f} s "
                    f"[{result.method}]")

        def work(progress: Progress) -> ConvertResult:
            return convert(request, progress)

        return report(self, work, summary)
