"""`cdisk` itself: the application that holds the commands (`commands.COMMANDS`), and `--version`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from plumbum import cli

from cdisk import __version__
from cdisk.cli.commands import COMMANDS
from cdisk.cli.help import Command


class CDisk(Command):
    """The top level: a command, or --version."""

    PROGNAME = "cdisk"
    VERSION = __version__
    DESCRIPTION = ("Turn a KubeVirt containerDisk image from podman's or docker's cache, an image archive or an "
                   "OCI layout into a disk file or block device, reading the disk where it lies in the image "
                   "(nothing is extracted).")
    SYNOPSIS = ("COMMAND [SWITCHES] ARGUMENTS", "--version [--verbose]")
    COMMAND_SUMMARIES: ClassVar[Mapping[str, str]] = {name: summary for name, (_, summary) in COMMANDS.items()}
    HELP_FOOTER = "See `cdisk COMMAND --help` for a command's switches and arguments."

    # `-v` is --verbose here too (as in every command and in qemu-img), never the version: `cdisk -v convert …`
    # converts, verbosely. plumbum's own -v/--version is replaced, so that --version can see --verbose.
    verbose = cli.Flag(["-v", "--verbose"], help="Say what is done at each step (in the command that follows); "
                                                 "with --version, the versions of the tools cdisk runs")
    show_version = cli.Flag(["--version"], help="Print cdisk's version and exit")

    def main(self, *args: str) -> int:
        if self.show_version:
            self.nested_command = None  # `cdisk --version convert …` prints the version only, as podman does
            print(f"cdisk {__version__}", flush=True)
            if self.verbose:
                from cdisk.cli.output import diagnostics_lines
                from cdisk.core.diagnostics import diagnose

                print("\n".join(diagnostics_lines(diagnose())), flush=True)
            return 0
        if args:
            self.usage_error(f"unknown command {args[0]!r}", f"the commands are {', '.join(COMMANDS)}; "
                                                              "see `cdisk --help`")
        if not self.nested_command:
            self.usage_error("no command given", f"give one of {', '.join(COMMANDS)}; see `cdisk --help`")
        return 0


for _name, (_where, _) in COMMANDS.items():
    CDisk.subcommand(_name, _where)
