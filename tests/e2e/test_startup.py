"""Start-up stays cheap: --version, --help and a no-op import only what they use (checked, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("podman", "rich", "requests", "tarfile", "cdisk.core.commands.convert", "cdisk.core.diagnostics",
         "concurrent")


def imported(*argv: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cdisk", *argv], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["convert", "--help"], ["refresh", "--help"]])
def test_meta_switches_import_nothing_heavy(argv: list[str]) -> None:
    modules = imported(*argv)
    assert "cdisk.cli.app" in modules
    assert [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY] == []


def test_version_prints_the_version() -> None:
    import cdisk

    proc = subprocess.run([sys.executable, "-m", "cdisk", "--version"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"cdisk {cdisk.__version__}\n", "")


def test_bare_version_imports_no_more_than_help() -> None:
    """The benchmark times `cdisk --version` as the floor of every run: it must stay as cheap as --help."""
    assert imported("--version") <= imported("--help")


def test_v_is_not_the_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "cdisk", "-v"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("cdisk: error: no command given; ")


def test_every_subpackage_is_shipped() -> None:
    """A package missing from pyproject's list is absent from a clean install (an editable one may hide it)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"cdisk"} | {
        "cdisk." + ".".join(init.parent.relative_to(root).parts)
        for top in ("cli", "core") for init in (root / top).rglob("__init__.py")}
    assert found == listed
