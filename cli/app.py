"""`cdisk`: the entry point. Subcommands are imported only when named, so --help and --version stay quick; a
usage error of any command ends here as one line on stderr (exit 2). Nothing heavy is imported before `main()` has
started the sandbox probe of a command that needs one: plumbum and the command's modules load while bwrap works.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cdisk.core import signals

if TYPE_CHECKING:
    from cdisk.cli.top import CDisk as CDisk  # what `__getattr__` gives, for the type checker

# Each command, the module and class that run it, and its line in `cdisk --help`.
COMMANDS = {
    "convert": ("cdisk.cli.convert.Convert", "Write the image's disk to TARGET (a file or a block device)"),
    "ls": ("cdisk.cli.ls.Ls", "Show what the image holds, without converting"),
    "verify": ("cdisk.cli.verify.Verify",
               "Check that TARGET holds exactly the image's disk, or without TARGET that IMAGE is intact"),
    "refresh": ("cdisk.cli.refresh.Refresh", "Make TARGET current (for cron and systemd timers)"),
    "serve": ("cdisk.cli.serve.Serve", "Serve the disk as a read-only NBD export, no conversion"),
    "build": ("cdisk.cli.build.Build", "Build a containerDisk from a disk file, without a Containerfile"),
}


# The commands whose qemu-img (or qemu-storage-daemon) runs in the sandbox.
SANDBOXED = frozenset({"convert", "ls", "verify", "refresh", "serve"})
_META = frozenset({"-h", "--help", "--help-all", "--version"})


def _probe_early(argv: Sequence[str]) -> None:
    """Start the sandbox probe (`core.qemu.sandbox.start_probe`) before the command's modules are imported, where
    the command line names a command that runs qemu-img: bwrap builds its namespaces (~10-40 ms) while Python
    imports the rest, instead of after. Only a guess from the words (a wrong one costs a probe reaped at exit);
    `--help` and `--version` start nothing."""
    words = argv[1:]
    if _META.isdisjoint(words) and next((w for w in words if not w.startswith("-")), None) in SANDBOXED:
        from cdisk.core.qemu import sandbox

        sandbox.start_probe()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: `argv` as sys.argv has it (the program first)."""
    signals.stop_on_signals()
    _probe_early(sys.argv if argv is None else argv)
    from cdisk.cli.top import CDisk
    from cdisk.core.errors import UsageError

    try:
        CDisk.run(list(argv) if argv is not None else None)
    except UsageError as error:
        from cdisk.cli.output import error_line

        error_line(error.message)
        sys.exit(error.exit_code)


def __getattr__(name: str) -> Any:
    """`CDisk`, imported from `cli.top` when asked for (completions, tests): importing this module stays light."""
    if name == "CDisk":
        from cdisk.cli.top import CDisk

        return CDisk
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
