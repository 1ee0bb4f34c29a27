"""Fixtures: real images in podman's store, a way to run the real `cdisk`, and a leak check after every test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import Entry, make_disk, oci_image, podman_build, remove_image, sh

for tool in ("podman", "qemu-img", "qemu-io", "bwrap"):
    if shutil.which(tool) is None:
        pytest.exit(f"{tool} is missing: run scripts/test, which installs it", returncode=1)


@dataclass
class Run:
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
    return Run(proc.returncode, proc.stdout, proc.stderr)


def same_disk(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    return sh("qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, a, b, check=False).returncode == 0


Convert = Callable[..., Run]


# Every image this test session made, so the leak check knows which mounts are its own.
MADE: set[str] = set()


class Images:
    """Builds test images and removes them after the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.names: list[str] = []

    def disk(
        self, name: str = "disk.qcow2", fmt: str = "qcow2", size: str = "8M", pattern: int = 0xAB, *extra: str
    ) -> Path:
        return make_disk(self.workdir / name, fmt, size, pattern, *extra)

    def build(self, files: dict[str, Path], dest: str = "/disk/") -> str:
        context = Path(tempfile.mkdtemp(dir=self.workdir, prefix="ctx-"))
        name = podman_build(context, files, dest)
        self.names.append(name)
        MADE.add(name)
        return name

    def layers(self, *layers: list[Entry]) -> str:
        name = oci_image(self.workdir, list(layers))
        self.names.append(name)
        MADE.add(name)
        return name

    def remove(self) -> None:
        for name in self.names:
            remove_image(name)


@pytest.fixture
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    made = Images(tmp_path_factory.mktemp("images"))
    yield made
    made.remove()


# Everything a test starts inherits this variable (cdisk, podman, bwrap, qemu-img), so the leak check
# looks only at processes of the test that runs now, not at other jobs on a shared machine.
TAG_VARIABLE = "CDISK_TEST_TAG"


def _tagged_processes(tag: str, needles: tuple[str, ...]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{TAG_VARIABLE}={tag}".encode() in environ and any(n in cmdline for n in needles):
            found.append(f"{entry.name} {cmdline}")
    return found


def _mounts_of(names: set[str]) -> set[str]:
    lines = sh("podman", "image", "mount", check=False).stdout.splitlines()
    return {line for line in lines if line.split(" ", 1)[0] in names}


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every test: no private podman service, qemu-img, sandbox, temp dir, partial file or image mount
    that the test started is left. What other jobs on the machine run is not looked at.
    """
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, tag)
    # A TMPDIR of the test's own (world-writable like /tmp, for the rootless user's runs too), so a temp dir
    # left there is this test's doing.
    temp_root = Path(tempfile.mkdtemp(prefix="pytest-tmpdir-", dir="/tmp"))
    temp_root.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(temp_root))
    made_before = set(MADE)
    try:
        yield
        made = MADE - made_before
        assert _tagged_processes(tag, ("podman system service",)) == [], "a private podman service outlived cdisk"
        assert _tagged_processes(tag, ("qemu-img", "bwrap")) == [], "a qemu-img process outlived cdisk"
        assert list(temp_root.glob("*cdisk*")) == [], "service dir or temp data left"
        leftovers = [p for p in tmp_path.rglob("*") if ".cdisk-" in p.name]
        assert leftovers == [], f"partial files or temp dirs left: {leftovers}"
        assert _mounts_of(made) == set(), "an image was left mounted"
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


METHODS = ["save", "mount"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Every convert case runs once per method of reading the disk."""
    return str(request.param)


@pytest.fixture
def convert(method: str) -> Callable[..., Run]:
    """`cdisk convert --method METHOD …` for the method under test."""

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Run:
        return cdisk("convert", "--method", method, *args, env=env)

    return run


def wait_for(predicate: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with temp storage; stopped afterwards."""
    if not sh("which", "docker-registry", check=False).stdout:
        pytest.fail("docker-registry is missing: run scripts/test, which installs it")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
