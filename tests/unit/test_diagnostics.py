"""What `cdisk --version --verbose` reports: each tool's version as it states it, or why there is none, and the
sandbox's state — from the real tools on this host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from plumbum import local

from cdisk.core import diagnostics
from cdisk.core.diagnostics import ToolVersion, diagnose, version_in
from tests.helpers import path_without


@pytest.mark.parametrize(("line", "version"), [
    ("qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
    ("podman version 4.3.1", "4.3.1"),
    ("Docker version 28.2.2, build e6534b4", "28.2.2, build e6534b4"),
    ("bubblewrap 0.8.0", "0.8.0"),
    ("skopeo version 1.9.3 commit: 2bd4ce4a", "1.9.3 commit: 2bd4ce4a"),
    ("10.0.2", "10.0.2"),
    ("usage: tool [options]", None),
    ("", None),
])
def test_version_in(line: str, version: str | None) -> None:
    assert version_in(line) == version


@pytest.mark.needs("qemu-img", "bwrap")
def test_a_host_without_engines(tmp_path: Path) -> None:
    with local.env(PATH=path_without(("podman", "docker", "skopeo"), tmp_path / "bin")):
        found = diagnose()
    tools = {tool.name: tool for tool in found.tools}
    assert [tool.name for tool in found.tools] == [name for name, _ in diagnostics.TOOLS]
    said = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=True).stdout
    assert tools["qemu-img"] == ToolVersion("qemu-img", version_in(said.splitlines()[0]))
    assert tools["podman"] == ToolVersion(
        "podman", None, "podman is not installed; install it (Debian/Ubuntu: apt-get install podman)")
    assert tools["docker"].version is None and "docker.io" in tools["docker"].note
    assert found.sandbox is None
    assert found.system.endswith(f"Linux {os.uname().release} {os.uname().machine}")


def test_a_tool_that_fails_is_told_with_its_words(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text("#!/bin/sh\necho 'skopeo: cannot read its config' >&2\nexit 3\n")
    (bin_dir / "skopeo").chmod(0o755)
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"):
        assert diagnostics._tool("skopeo", "skopeo") == ToolVersion(
            "skopeo", None, "`skopeo --version` failed: skopeo: cannot read its config")
