"""Fixtures: real images in podman's store, a way to run the real `cdisk`, and a leak check after every test.

A test that drives an external tool skips where that tool is missing, so the pure tests (layers, formats,
tar headers, …) run on any machine; with CDISK_REQUIRE_TOOLS=1 (scripts/test) a missing tool fails the
whole run instead. A test needs a tool when it uses a fixture that drives it (`FIXTURE_TOOLS`, also through
any fixture built on one), when it is marked `@pytest.mark.needs("podman", …)`, and — caught as it happens,
for whatever the first two missed — when it runs a missing tool itself or through `cdisk()`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
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
    remove_image,
    sh,
)

# The external tools the suite drives, each with the Debian package that has it.
TOOLS = {"podman": "podman", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils",
         "qemu-storage-daemon": "qemu-system-common", "nbdinfo": "libnbd-bin",
         "bwrap": "bubblewrap",
         "docker-registry": "docker-registry", "docker": "docker.io", "dockerd": "docker.io", "skopeo": "skopeo"}
# Set (to anything but 0) by scripts/test: there a missing tool is a broken setup, never a reason to skip.
REQUIRE_TOOLS = "CDISK_REQUIRE_TOOLS"
# What the fixtures below drive. An image is made to be read by cdisk, which runs qemu-img in bwrap.
FIXTURE_TOOLS = {
    "images": ("podman", "qemu-img", "qemu-io", "bwrap"),
    "method": ("podman", "qemu-img", "bwrap"),
    "registry": ("podman", "docker-registry"),
    "dockerd": ("docker", "dockerd"),
}


def missing_tools(tools: Iterable[str]) -> list[str]:
    """Those of `tools` not on this process's PATH, each once, in the order given."""
    return [tool for tool in dict.fromkeys(tools) if shutil.which(tool) is None]


def _tools_required() -> bool:
    return os.environ.get(REQUIRE_TOOLS, "") not in ("", "0")


def _skip_reason(tools: list[str]) -> str:
    packages = " ".join(dict.fromkeys(TOOLS[tool] for tool in tools))
    return (f"{', '.join(tools)} not installed: this test runs {'it' if len(tools) == 1 else 'them'} "
            f"(apt-get install {packages}, or run scripts/test)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*tools): the test runs these tools (names from conftest.TOOLS) itself; it is skipped "
                   f"where one is missing, and with {REQUIRE_TOOLS}=1 the run fails instead")
    if _tools_required() and (absent := missing_tools(TOOLS)):
        pytest.exit(f"{', '.join(absent)} missing and {REQUIRE_TOOLS} is set: run scripts/test, which installs "
                    "everything the tests need", returncode=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with its reason, every test that needs a tool this machine lacks."""
    for item in items:
        needed = [tool for mark in item.iter_markers("needs") for tool in mark.args]
        if unknown := sorted(set(needed) - set(TOOLS)):
            raise pytest.UsageError(f"{item.nodeid}: needs({', '.join(unknown)}): not in conftest.TOOLS")
        fixtures = getattr(item, "fixturenames", ())
        needed += [tool for fixture, tools in FIXTURE_TOOLS.items() if fixture in fixtures for tool in tools]
        if absent := missing_tools(needed):
            item.add_marker(pytest.mark.skip(reason=_skip_reason(absent)))


def _skip_if_a_tool_is_missing(error: OSError) -> None:
    """A test that ran a tool it declared nowhere, on a machine without it (not on PATH, or not executable
    there): skip it, as if declared.
    """
    tool = os.path.basename(str(error.filename or ""))
    if isinstance(error, FileNotFoundError | PermissionError) and tool in TOOLS and not _tools_required() \
            and shutil.which(tool) is None:
        pytest.skip(_skip_reason([tool]))


@pytest.hookimpl(wrapper=True)
def _tool_errors_skip(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except OSError as error:
        _skip_if_a_tool_is_missing(error)
        raise


# The same net around a test's setup (its fixtures) and its call.
pytest_runtest_setup = pytest_runtest_call = _tool_errors_skip


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
    # cdisk's own word that a tool it needed is not there (exit 7): where it is indeed missing from this
    # machine, the test needs it and is skipped; anywhere else (a test's own PATH) it is the test's result.
    lacking = _NOT_INSTALLED.search(proc.stderr) if proc.returncode == 7 else None
    if lacking and lacking[1] in TOOLS and not _tools_required() and shutil.which(lacking[1]) is None:
        pytest.skip(_skip_reason([lacking[1]]))
    return Run(proc.returncode, proc.stdout, proc.stderr)


_NOT_INSTALLED = re.compile(r"^cdisk: error: (\S+) is not installed", re.MULTILINE)


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


def same_disk(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    return sh("qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, a, b, check=False).returncode == 0


Convert = Callable[..., Run]



class Images:
    """Builds test images in one engine's store (podman's, or docker's for a test of the docker engine) and
    removes them after the test.
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


@pytest.fixture
def images(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Images]:
    """The test's images, in the store of the engine under test (`reading`, or `engine` where a module names
    one), else in podman's.
    """
    engine = "podman"
    if "reading" in request.fixturenames:
        engine = request.getfixturevalue("reading")[0]
    elif "engine" in request.fixturenames:
        engine = request.getfixturevalue("engine")
    made = Images(tmp_path_factory.mktemp("images"), engine)
    yield made
    made.remove()


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


def _mounts_of(names: set[str]) -> set[str]:
    listed = sh("podman", "image", "mount")
    return {line for line in listed.stdout.splitlines() if line.split(" ", 1)[0] in names}


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every test: no private podman service, qemu-img, sandbox, temp dir or partial file that the test
    started is left. What other jobs on the machine run is not looked at; podman is not run at all.
    """
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, tag)
    # A TMPDIR of the test's own (world-writable like /tmp, for the rootless user's runs too), so a temp dir
    # left there is this test's doing.
    temp_root = Path(tempfile.mkdtemp(prefix="pytest-tmpdir-", dir="/tmp"))
    temp_root.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(temp_root))
    try:
        yield
        # Image mounts are checked by `images` as it removes the test's images, which it does before this.
        assert tagged_processes(("podman system service",), tag) == {}, "a private podman service outlived cdisk"
        assert tagged_processes(("qemu-img", "bwrap"), tag) == {}, "a qemu-img process outlived cdisk"
        assert tagged_processes(("docker --host",), tag) == {}, "a docker command outlived cdisk"
        assert list(temp_root.glob("*cdisk*")) == [], "service dir or temp data left"
        leftovers = [p for p in tmp_path.rglob("*") if ".cdisk-" in p.name]
        assert leftovers == [], f"partial files or temp dirs left: {leftovers}"
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


# Every engine with every method of reading it has (docker cannot mount).
READINGS = [("podman", "save"), ("podman", "mount"), ("podman", "layers"), ("docker", "save"), ("docker", "layers")]


@pytest.fixture(params=READINGS, ids=["-".join(r) for r in READINGS])
def reading(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Every convert case runs once per engine and method of reading the disk."""
    engine, method = request.param
    if engine == "docker":
        request.getfixturevalue("docker_host")
    return engine, method


@pytest.fixture
def method(reading: tuple[str, str]) -> str:
    return reading[1]


@pytest.fixture
def engine(reading: tuple[str, str]) -> str:
    return reading[0]


@pytest.fixture
def convert(engine: str, method: str) -> Callable[..., Run]:
    """`cdisk convert --engine ENGINE --method METHOD …` for the engine and method under test."""

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Run:
        return cdisk("convert", "--engine", engine, "--method", method, *args, env=env)

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
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    # Started by whichever test first needs it, it serves the whole session: it must not carry that test's
    # tag or TMPDIR (removed after the test), so it is not taken for that test's leftover.
    env = {name: value for name, value in os.environ.items() if name not in (TAG_VARIABLE, "TMPDIR")}
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[str]:
    """A docker daemon of the suite's own: private socket, data and exec roots in a temp dir, no networking
    of its own (no iptables, no bridge). Stopped, and its dir removed, at the end of the session. Its
    DOCKER_HOST (unix:///tmp/cdisk-test-dockerd-*/docker.sock); `docker_host` points a test at it.
    """
    if absent := missing_tools(FIXTURE_TOOLS["dockerd"]):
        if _tools_required():
            pytest.fail(f"{', '.join(absent)} missing: run scripts/test, which installs everything")
        pytest.skip(_skip_reason(absent))
    # In /tmp (not pytest's 0700 dir): the docker-group test's user must reach the socket.
    root = Path(tempfile.mkdtemp(prefix="cdisk-test-dockerd-", dir="/tmp"))
    root.chmod(0o711)
    socket_path = root / "docker.sock"
    env = {name: value for name, value in os.environ.items() if name not in (TAG_VARIABLE, "TMPDIR", "DOCKER_HOST")}
    host = f"unix://{socket_path}"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["dockerd", "--host", f"unix://{socket_path}", "--data-root", str(root / "data"),
         "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid"), "--iptables=false",
         "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2", "--group", "root"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-2000:]
            return sh("docker", "--host", host, "version", check=False).returncode == 0

        wait_for(up, 60)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # Nothing ran, so nothing of it is mounted; its overlay2 dirs are plain files by now.
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def docker_host(dockerd: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKER_HOST pointing this test (its docker commands and its cdisk runs) at the suite's dockerd; the
    tests that do not ask for it see no docker at all, whatever ran before them.
    """
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    return dockerd


class Remote:
    """A repository in the suite's registry, pushed to by the engine the test's images are built with; `push`
    makes its tag hold a new disk that only the registry has (cdisk must pull it).
    """

    def __init__(self, images: Images, registry: str) -> None:
        self.images = images
        self.ref = f"{registry}/cdisk/{images.engine}-{uuid.uuid4().hex[:8]}:latest"

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


@pytest.fixture
def remote(images: Images, registry: str) -> Iterator[Remote]:
    made = Remote(images, registry)
    yield made
    for engine in dict.fromkeys((images.engine, "podman")):  # whatever pulled it
        sh(engine, "rmi", "-f", made.ref, check=False)
