"""`cdisk`: the top-level application. Subcommands are imported only when named, so --help stays quick."""

from __future__ import annotations

import sys

from plumbum import cli

from cdisk import __version__
from cdisk.core import signals


class CDisk(cli.Application):
    """Turn a containerDisk image from podman's cache into a disk file or block device, in place."""

    PROGNAME = "cdisk"
    VERSION = __version__
    DESCRIPTION = ("Turn a KubeVirt containerDisk image from podman's cache into a disk file or block device, "
                   "reading the disk where it lies in the image (nothing is extracted).")

    def main(self, *args: str) -> int:
        if args:
            print(f"cdisk: unknown command {args[0]!r}; run `cdisk --help` for the commands", file=sys.stderr)
            return 2
        if not self.nested_command:
            self.help()
            return 2
        return 0


CDisk.subcommand("convert", "cdisk.cli.convert.Convert")
CDisk.subcommand("ls", "cdisk.cli.ls.Ls")
CDisk.subcommand("verify", "cdisk.cli.verify.Verify")
CDisk.subcommand("refresh", "cdisk.cli.refresh.Refresh")
CDisk.subcommand("serve", "cdisk.cli.serve.Serve")
CDisk.subcommand("build", "cdisk.cli.build.Build")


def main() -> None:
    """Console-script entry point."""
    signals.stop_on_signals()
    CDisk.run()
