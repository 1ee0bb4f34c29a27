"""The command line as an operator types it: a usage error is one line on stderr, nothing on stdout, exit 2 (a
`--json` reader never gets text); `-v` is --verbose wherever it stands; `--tls-verify` alone means true, as in
podman; `cdisk --version --verbose` says what a bug report needs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, cdisk, same_disk
from tests.images import Entry, layer_tar, oci_layout

DISK = bytes(range(256)) * 64  # 16 KiB of raw disk, 32 sectors


@pytest.mark.parametrize(("argv", "says"), [
    (["ls", "--method", "x", "IMG"], "--method 'x': not one of auto, "),
    (["ls", "--json", "--methd", "save", "IMG"], "unknown switch --methd; see `cdisk ls --help`"),
    (["convert", "--json", "IMG"], "TARGET missing; usage: cdisk convert [SWITCHES] IMAGE TARGET"),
    (["convert", "IMG", "T", "extra"], "too many arguments: 'extra'"),
    (["convert", "--target-is-zero", "IMG", "T"], "--target-is-zero needs --force"),
    (["convert", "-f", "--force", "IMG", "T"], "-f given twice"),
    (["refresh", "--pull"], "--pull needs a value"),
    (["serve", "--socket-mode"], "--socket-mode needs a value"),
    (["copy", "IMG", "T"], "unknown command 'copy'"),
    ([], "no command given"),
])
def test_a_usage_error_is_one_line_on_stderr(argv: list[str], says: str) -> None:
    result = cdisk(*argv)
    assert result.out == "", result.out
    assert_one_line_error(result, 2, says)


def test_help_goes_to_stdout_and_succeeds() -> None:
    result = cdisk("convert", "--help")
    assert result.code == 0 and result.err == ""
    assert result.out.startswith("Usage: cdisk convert [SWITCHES] IMAGE TARGET\n")


def _layout(tmp_path: Path) -> str:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/vm.img", DISK)])])
    (tmp_path / "disk.raw").write_bytes(DISK)
    return f"oci:{layout}"


@pytest.mark.needs("qemu-img", "bwrap")
def test_v_before_the_command_converts_verbosely(tmp_path: Path) -> None:
    image = _layout(tmp_path)
    result = cdisk("-v", "convert", image, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert "cdisk: converting" in result.err and "cdisk: 100%" in result.err
    assert "0.1.0" not in result.out
    assert same_disk(tmp_path / "disk.raw", "raw", tmp_path / "out.raw", "raw")


@pytest.mark.needs("qemu-img", "bwrap")
@pytest.mark.parametrize("tls", [["--tls-verify"], ["--tls-verify=false"], ["--tls-verify", "true"]])
def test_tls_verify_alone_or_with_a_value(tmp_path: Path, tls: list[str]) -> None:
    image = _layout(tmp_path)
    result = cdisk("convert", "--json", *tls, image, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert json.loads(result.out)["target"] == str(tmp_path / "out.raw")


def _version_of(tool: str) -> str:
    line = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    found = re.search(r"\d.*", line)
    assert found
    return found[0]


@pytest.mark.needs("qemu-img", "bwrap")
def test_version_verbose_names_each_tool_and_the_sandbox(no_engines: dict[str, str]) -> None:
    result = cdisk("--version", "--verbose", env=no_engines)
    assert result.code == 0 and result.err == "", result.err
    lines = result.out.splitlines()
    assert lines[0] == "cdisk 0.1.0"
    assert lines[1].startswith("system: ") and lines[2].startswith("python: 3.")
    assert f"qemu-img: {_version_of('qemu-img')}" in lines
    assert "podman: podman is not installed; install it (Debian/Ubuntu: apt-get install podman)" in lines
    assert lines[-1] == "sandbox: works"
    assert cdisk("--version").out == "cdisk 0.1.0\n"
