"""What a bug report needs to know of this host (`cdisk --version --verbose`): the version of each tool cdisk
runs, or why there is none, and whether qemu-img runs in its sandbox here.

Each tool is asked for its `--version` (docker's daemon for its own), with a short deadline: a tool that hangs
is reported as such, never waited for.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from cdisk.core import processes
from cdisk.core.errors import CdiskError, LimitExceeded

# Each tool cdisk runs and the Debian package that has it, in the order a report lists them.
TOOLS = (("qemu-img", "qemu-utils"), ("qemu-storage-daemon", "qemu-system-common"), ("podman", "podman"),
         ("docker", "docker.io"), ("skopeo", "skopeo"), ("bwrap", "bubblewrap"))
DEADLINE = 10.0
_LEAD = re.compile(r"^\s*(?:\S+\s+)?(?:version\s+)?(?=\d)", re.IGNORECASE)


@dataclass(frozen=True)
class ToolVersion:
    """One tool: its version as it says it (`7.2.6 (Debian 1:7.2+dfsg-7+deb12u6)`), or None and why not."""

    name: str
    version: str | None
    note: str = ""


@dataclass(frozen=True)
class Diagnostics:
    """The host as a bug report needs it. `sandbox` is None where qemu-img runs confined, else why not."""

    python: str
    system: str  # the distribution and the kernel: user namespaces, overlay and reflinks depend on both
    tools: tuple[ToolVersion, ...]
    sandbox: str | None


def version_in(first_line: str) -> str | None:
    """The version a tool's `--version` line states, without the tool's name and the word `version`:
    `qemu-img version 7.2.6 (Debian …)` → `7.2.6 (Debian …)`, `Docker version 28.0.1, build 068a01e` →
    `28.0.1, build 068a01e`, `bubblewrap 0.8.0` → `0.8.0`; None when the line states no version."""
    found = _LEAD.match(first_line)
    return first_line[found.end():].strip() if found else None


def _asked(name: str, package: str, argv: list[str]) -> tuple[str | None, str]:
    """`name argv`'s first line, or None and why there is none."""
    try:
        code, out, err = processes.run(processes.command(name, package), argv, timeout=DEADLINE)
    except CdiskError as error:  # not installed, or past the deadline
        if isinstance(error, LimitExceeded):
            return None, f"`{name} {' '.join(argv)}` did not answer within {DEADLINE:.0f} s"
        return None, error.message
    if code != 0:
        return None, f"`{name} {' '.join(argv)}` failed: {processes.last_line(err, code)}"
    lines = out.strip().splitlines()
    return (lines[0] if lines else ""), ""


def _tool(name: str, package: str) -> ToolVersion:
    line, why = _asked(name, package, ["--version"])
    if line is None:
        return ToolVersion(name, None, why)
    version = version_in(line)
    if version is None:
        return ToolVersion(name, None, f"`{name} --version` said {line[:80]!r}")
    if name == "docker":
        return ToolVersion(name, version, _docker_daemon())
    return ToolVersion(name, version)


def _docker_daemon() -> str:
    """The docker daemon cdisk would use: its version, or why it does not answer."""
    from cdisk.core.engines import docker
    from cdisk.core.engines.common import answers

    try:
        socket = docker.default_socket()
    except CdiskError as error:
        return error.message
    if not answers(socket):
        return f"no daemon answers at {socket}"
    line, why = _asked("docker", "docker.io", ["--host", f"unix://{socket}", "version", "--format",
                                               "{{.Server.Version}}"])
    return f"daemon {line} at {socket}" if line else why


def system() -> str:
    """`Debian GNU/Linux 12 (bookworm), Linux 6.1.0-28-amd64 x86_64`, as os-release and uname say."""
    try:
        distribution = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        distribution = ""
    kernel = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{distribution}, {kernel}" if distribution else kernel


def diagnose() -> Diagnostics:
    """This host's tools and sandbox (the sandbox probe runs while the tools are asked, one after the other)."""
    from cdisk.core.qemu import qemu_img

    qemu_img.start_sandbox_probe()
    tools = tuple(_tool(name, package) for name, package in TOOLS)
    return Diagnostics(platform.python_version(), system(), tools, qemu_img.unconfined_reason())
