"""`cli.app`: the sandbox probe of a command that runs qemu-img starts before plumbum and the command's modules are
imported (so that bwrap works while Python imports), and never for --help or --version."""

from __future__ import annotations

import subprocess
import sys

import pytest

_RUN = """
import sys
from cdisk.core.qemu import sandbox
seen = []
sandbox.start_probe = lambda: seen.append(sorted(m for m in ("plumbum", "cdisk.cli.convert") if m in sys.modules))
from cdisk.cli import app
try:
    app.main(["cdisk", *sys.argv[1:]])
except SystemExit:
    pass
print(seen[:1], file=sys.stderr)  # the first: resolve() asks again later, at no cost
"""


def _probes(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["convert", "--engine", "nosuch", "x", "y"], ["-v", "ls", "x"],
                                  ["serve", "--json", "x"]])
def test_a_sandboxed_command_probes_before_the_heavy_imports(argv: list[str]) -> None:
    assert _probes(*argv) == "[[]]"


@pytest.mark.parametrize("argv", [["convert", "--help"], ["--version"], ["--help"], ["build", "-h"]])
def test_help_and_version_probe_nothing(argv: list[str]) -> None:
    assert _probes(*argv) == "[]"
