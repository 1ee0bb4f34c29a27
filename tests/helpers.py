"""What tests call: the real `cdisk` in a child process and its result, checks on that result, a host without
some tool, the test's images and registry repository, and the processes a test started.

A test that drives an external tool skips where that tool is missing (see conftest.py); `cdisk()` carries
that rule to the tools cdisk itself runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import (
    Entry,
    docker_image_blobs,
    layer_tar,
    make_disk,
    oci_image,
    podman_build,
    record_image,
    remove_image,
    sh,
)

# --- the tools the suite drives ---------------------------------------------------------------------------

# The external tools the suite drives, each with the Debian package that has it.
TOOLS = {"podman": "podman", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils",
         "qemu-storage-daemon": "qemu-system-common", "nbdinfo": "libnbd-bin",
         "bwrap": "bubblewrap",
         "docker-registry": "docker-registry", "docker": "docker.io", "dockerd": "docker.io", "skopeo": "skopeo",
         "go-md2man": "go-md2man", "zsh": "zsh", "fish": "fish", "man": "man-db", "groff": "groff-base"}
# Set (to anything but 0) by scripts/test: there a missing tool is a broken setup, never a reason to skip.
REQUIRE_TOOLS = "CDISK_REQUIRE_TOOLS"


def missing_tools(tools: Iterable[str]) -> list[str]:
    """Those of `tools` not on this process's PATH, each once, in the order given."""
    return [tool for tool in dict.fromkeys(tools) if shutil.which(tool) is None]


def tools_required() -> bool:
    """Whether this run must have every tool (scripts/test), rather than skip the tests of a missing one."""
    return os.environ.get(REQUIRE_TOOLS, "") not in ("", "0")


def tool_or_skip(tool: str) -> str:
    """`tool`'s path; a missing one skips the test, or fails it under scripts/test (whose setup installs it)."""
    path = shutil.which(tool)
    if path is None:
        if tools_required():
            pytest.fail(f"{tool} is not installed: scripts/setup installs {TOOLS[tool]} with CDISK_SETUP_TEST=1")
        pytest.skip(skip_reason([tool]))
    return path


def skip_reason(tools: list[str]) -> str:
    """Why a test of `tools`, missing here, is skipped: with the packages to install."""
    packages = " ".join(dict.fromkeys(TOOLS[tool] for tool in tools))
    return (f"{', '.join(tools)} not installed: this test runs {'it' if len(tools) == 1 else 'them'} "
            f"(apt-get install {packages}, or run scripts/test)")


def path_without(tools: Iterable[str], bin_dir: Path) -> str:
    """A PATH of one directory holding every command of this PATH but `tools` (a host without them)."""
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(":"):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            if entry.name not in tools and not (bin_dir / entry.name).exists() and os.access(entry.path, os.X_OK):
                (bin_dir / entry.name).symlink_to(entry.path)
    assert all(shutil.which(tool, path=str(bin_dir)) is None for tool in tools)
    return str(bin_dir)


# --- the real command line ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What a run of `cdisk` gave: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def cdisk(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """The real command line, in a child process, as an operator would run it (no TTY)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cdisk", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    # cdisk's own word that a tool it needed is not there (exit 7): where it is indeed missing from this
    # machine, the test needs it and is skipped; anywhere else (a test's own PATH) it is the test's result.
    lacking = _NOT_INSTALLED.search(proc.stderr) if proc.returncode == 7 else None
    if lacking and lacking[1] in TOOLS and not tools_required() and shutil.which(lacking[1]) is None:
        pytest.skip(skip_reason([lacking[1]]))
    return Run(proc.returncode, proc.stdout, proc.stderr)


_NOT_INSTALLED = re.compile(r"^cdisk: error: (\S+) is not installed", re.MULTILINE)

# The `convert` fixture: `cdisk convert` on the engine and method under test.
Convert = Callable[..., Run]


def converted(source: str | Path, target: Path, *switches: str | Path, env: dict[str, str] | None = None) -> Run:
    """`cdisk convert -v --json [SWITCHES] SOURCE TARGET`, which must succeed: its progress lines are on stderr,
    its result (JSON) on stdout.
    """
    result = cdisk("convert", "-v", "--json", *switches, source, target, env=env)
    assert result.code == 0, result.err
    return result


def assert_one_line_error(result: Run, code: int, says: str = "") -> None:
    """`result` is a refusal as an operator sees it: exit `code` and one line, `cdisk: error: …` holding
    `says` — no traceback, no `unexpected` error cdisk did not foresee.
    """
    assert result.code == code, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("cdisk: error: "), result.err
    assert "unexpected" not in result.err, result.err
    assert says in result.err, result.err


def podman_major() -> int:
    """The major version of the podman installed (4 on Debian 12, 5 on Debian 13)."""
    version = subprocess.run(["podman", "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    return int(version.split(".")[0])


def refused_by_podman(address: str) -> str:
    """How podman's API tells a pull from `address`, where nothing listens: 4.x names the dial, 5.x only its end."""
    return "connection refused" if podman_major() >= 5 else f"dial tcp {address}: connect: connection refused"


def same_disk(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """Whether `qemu-img compare` finds the two disks' contents identical."""
    return sh("qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, a, b, check=False).returncode == 0


# Every engine with every method of reading it has (docker cannot mount): the `reading` fixture's cases.
READINGS = [("podman", "save"), ("podman", "mount"), ("podman", "layers"), ("docker", "save"), ("docker", "layers")]


# --- the test's images -------------------------------------------------------------------------------------


class Images:
    """Builds test images in one engine's store (podman's, or docker's for a test of the docker engine) and
    removes them after the test (the `images` fixture does; a test that makes one itself calls `remove`).
    """

    def __init__(self, workdir: Path, engine: str = "podman") -> None:
        self.workdir = workdir
        self.engine = engine
        self.names: list[str] = []

    def disk(
        self, name: str = "disk.qcow2", fmt: str = "qcow2", size: str = "8M", pattern: int = 0xAB, *extra: str
    ) -> Path:
        return make_disk(self.workdir / name, fmt, size, pattern, *extra)

    def build(self, files: dict[str, Path], dest: str = "/disk/") -> str:
        context = Path(tempfile.mkdtemp(dir=self.workdir, prefix="ctx-"))
        name = podman_build(context, files, dest, self.engine)
        self.names.append(name)
        return name

    def layers(self, *layers: list[Entry]) -> str:
        if self.engine == "docker":
            name = docker_image_blobs(self.workdir, [layer_tar(entries) for entries in layers])
        else:
            name = oci_image(self.workdir, list(layers))
        self.names.append(name)
        return name

    def remove(self) -> None:
        """Remove the test's images; fail the test if one of them was left mounted.

        The mounts are looked at first: `podman rmi -f` takes an image's mounts with it, so a mount cdisk
        leaked could not be seen afterwards.
        """
        try:
            mounted = _mounts_of(set(self.names)) if self.names and self.engine == "podman" else set()
        finally:
            for name in self.names:
                remove_image(name, self.engine)
        assert mounted == set(), f"an image was left mounted: {sorted(mounted)}"


def _mounts_of(names: set[str]) -> set[str]:
    listed = sh("podman", "image", "mount")
    return {line for line in listed.stdout.splitlines() if line.split(" ", 1)[0] in names}


class Remote:
    """A repository in the suite's registry, pushed to by the engine the test's images are built with; `push`
    makes its tag hold a new disk that only the registry has (cdisk must pull it).
    """

    def __init__(self, images: Images, registry: str) -> None:
        self.images = images
        self.ref = f"{registry}/cdisk/{images.engine}-{uuid.uuid4().hex[:8]}:latest"
        record_image(self.ref.rpartition(":")[0])

    def push(self, pattern: int, size: str = "8M", fmt: str = "qcow2", fill: bool = False) -> Path:
        disk = self.images.disk(f"d{pattern}.{fmt}", fmt=fmt, size=size, pattern=pattern)
        if fill:
            sh("qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 {size}", disk)
        local = self.images.build({f"disk.{fmt}": disk})
        if self.images.engine == "docker":  # 127.0.0.0/8 is an insecure registry to docker already
            sh("docker", "tag", local, self.ref)
            sh("docker", "push", "-q", self.ref)
            sh("docker", "rmi", self.ref)
        else:
            sh("podman", "push", "-q", "--tls-verify=false", local, self.ref)
        return disk


# --- the processes a test started ------------------------------------------------------------------------

# Everything a test starts inherits this variable (cdisk, podman, bwrap, qemu-img), so the leak check
# looks only at processes of the test that runs now, not at other jobs on a shared machine.
TAG_VARIABLE = "CDISK_TEST_TAG"


def tagged_processes(needles: tuple[str, ...], tag: str | None = None) -> dict[int, str]:
    """The live processes started by the running test (or those carrying `tag`) whose command line holds
    one of `needles`: pid -> command line. What other jobs on the machine run is never among them.
    """
    tag = tag or os.environ[TAG_VARIABLE]
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{TAG_VARIABLE}={tag}".encode() in environ and any(n in cmdline for n in needles):
            found[int(entry.name)] = cmdline
    return found


def private_services(parent: int) -> list[int]:
    """The private podman services (on a `cdisk-podman-*` socket) that process `parent`, which the running test
    started, has started itself: never another run's.
    """
    def parent_of(pid: int) -> int | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])

    return [pid for pid, cmdline in tagged_processes(("podman system service",)).items()
            if "cdisk-podman-" in cmdline and parent_of(pid) == parent]


def wait_for(predicate: Callable[[], bool], seconds: float = 30) -> None:
    """Poll `predicate` until it holds; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def is_open(fd: int) -> bool:
    """Whether descriptor `fd` is open in this process."""
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as error:
        assert error.errno == errno.EBADF
        return False
    return True


class Stages:
    """A `Progress` that keeps the stage lines and the warnings it is told, for a test to read."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.warnings: list[str] = []

    def stage(self, name: str) -> None:
        self.stages.append(name)

    def update(self, done: float, total: float) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# What a host file holds in the tests of the sandbox: no byte of it may reach a target or qemu-img's output.
SECRET = b"HOST-SECRET-" * 400

