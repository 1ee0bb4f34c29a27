"""Fixtures and the pytest plugin: real images in an engine's store, the engine and method under test, a
registry and a docker daemon of the suite's own, and a leak check after every test. What tests call
(`cdisk()`, `same_disk()`, …) is in helpers.py.

A test that drives an external tool skips where that tool is missing, so the pure tests (layers, formats,
tar headers, …) run on any machine; with CDISK_REQUIRE_TOOLS=1 (scripts/test) a missing tool fails the
whole run instead. A test needs a tool when it uses a fixture that drives it (`FIXTURE_TOOLS`, also through
any fixture built on one), when it is marked `@pytest.mark.needs("podman", …)`, and — caught as it happens,
for whatever the first two missed — when it runs a missing tool itself or through `cdisk()`.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Generator, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from cdisk.core import leftovers
from tests.helpers import (
    READINGS,
    REQUIRE_TOOLS,
    SECRET,
    TAG_VARIABLE,
    TOOLS,
    Convert,
    Images,
    Remote,
    Run,
    cdisk,
    missing_tools,
    path_without,
    skip_reason,
    tagged_processes,
    tools_required,
)
from tests.images import keep_ledger, sh
from tests.mounts import mounts_under
from tests.private_dockerd import private_dockerd, unmount_left
from tests.registries import Registry

# What the fixtures below drive. An image is made to be read by cdisk, which runs qemu-img in bwrap.
FIXTURE_TOOLS = {
    "images": ("podman", "qemu-img", "qemu-io", "bwrap"),
    "method": ("podman", "qemu-img", "bwrap"),
    "registry": ("podman", "docker-registry"),
    "logged_registry": ("podman", "docker-registry"),
    "dockerd": ("docker", "dockerd"),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*tools): the test runs these tools (names from helpers.TOOLS) itself; it is skipped "
                   f"where one is missing, and with {REQUIRE_TOOLS}=1 the run fails instead")
    if tools_required() and (absent := missing_tools(TOOLS)):
        pytest.exit(f"{', '.join(absent)} missing and {REQUIRE_TOOLS} is set: run scripts/test, which installs "
                    "everything the tests need", returncode=1)


_IMAGE_LEDGER = leftovers.Pattern(re.compile(r"cdisk-test-images-[a-z0-9_]{8}"), is_dir=False)


@pytest.fixture(scope="session", autouse=True)
def image_ledger() -> Iterator[None]:
    """The session's ledger of the images it names (`tests.images.record_image`), held locked while it runs; the
    ledgers of sessions killed before their end (their lock free) have their images removed first."""
    leftovers.sweep("/tmp", (_IMAGE_LEDGER,), undo=_forget_ledger)
    fd, path = leftovers.locked_file("/tmp", "cdisk-test-images-")
    keep_ledger(fd)
    try:
        yield
    finally:
        keep_ledger(None)
        os.unlink(path)
        os.close(fd)


def _forget_ledger(fd: int) -> bool:
    """Every image a dead session's ledger names removed from podman's store (docker's went with its dockerd);
    whether the ledger may go."""
    names = os.pread(fd, 1 << 22, 0).decode(errors="replace").split()
    if names and shutil.which("podman") is None:
        return False
    for name in dict.fromkeys(names):
        ids = sh("podman", "images", "--quiet", "--", name, check=False).stdout.split()
        if ids:
            sh("podman", "rmi", "-f", *dict.fromkeys(ids), check=False)
    return True


_TEST_TMPDIR = leftovers.Pattern(re.compile(r"pytest-tmpdir-[a-z0-9_]{8}"), is_dir=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """What suites killed before their end left in /tmp of the tests' own TMPDIRs: each is held under a lock while
    its test runs, and only an empty one is removed (cdisk's own sweep, whose rule for a directory not marked as
    cdisk's is just that)."""
    leftovers.sweep("/tmp", (_TEST_TMPDIR,))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with its reason, every test that needs a tool this machine lacks."""
    for item in items:
        needed = [tool for mark in item.iter_markers("needs") for tool in mark.args]
        if unknown := sorted(set(needed) - set(TOOLS)):
            raise pytest.UsageError(f"{item.nodeid}: needs({', '.join(unknown)}): not in helpers.TOOLS")
        # A test's own parameter named like a fixture (`@pytest.mark.parametrize("method", …)`) is no fixture.
        params = item.callspec.params if isinstance(item, pytest.Function) and hasattr(item, "callspec") else {}
        fixtures = [name for name in getattr(item, "fixturenames", ()) if name not in params]
        needed += [tool for fixture, tools in FIXTURE_TOOLS.items() if fixture in fixtures for tool in tools]
        if absent := missing_tools(needed):
            item.add_marker(pytest.mark.skip(reason=skip_reason(absent)))


def _skip_if_a_tool_is_missing(error: OSError) -> None:
    """A test that ran a tool it declared nowhere, on a machine without it (not on PATH, or not executable
    there): skip it, as if declared.
    """
    tool = os.path.basename(str(error.filename or ""))
    if isinstance(error, FileNotFoundError | PermissionError) and tool in TOOLS and not tools_required() \
            and shutil.which(tool) is None:
        pytest.skip(skip_reason([tool]))


@pytest.hookimpl(wrapper=True)
def _tool_errors_skip(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except OSError as error:
        _skip_if_a_tool_is_missing(error)
        raise


# The same net around a test's setup (its fixtures) and its call.
pytest_runtest_setup = pytest_runtest_call = _tool_errors_skip


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
    held = os.open(temp_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX)  # while the test runs: a suite killed before its end leaves it free
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
        os.close(held)


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
def convert(engine: str, method: str) -> Convert:
    """`cdisk convert --engine ENGINE --method METHOD …` for the engine and method under test."""

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Run:
        return cdisk("convert", "--engine", engine, "--method", method, *args, env=env)

    return run


@pytest.fixture(scope="session")
def no_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a host with neither podman nor docker (a PATH of every other command here), for
    `cdisk(…, env=no_engines)`.
    """
    return {"PATH": path_without(("podman", "docker"), tmp_path_factory.mktemp("no-engines") / "bin")}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with temp storage; stopped afterwards."""
    # Started by whichever test first needs it, it serves the whole session: it must not carry that test's
    # tag or TMPDIR (removed after the test), so it is not taken for that test's leftover.
    env = {name: value for name, value in os.environ.items() if name not in (TAG_VARIABLE, "TMPDIR")}
    started = Registry(tmp_path_factory.mktemp("registry"), env)
    yield started.address
    started.stop()


@pytest.fixture
def logged_registry(tmp_path: Path) -> Iterator[Registry]:
    """A docker-registry of this test's own, its access log read by the test (what it was asked); stopped at its
    end (the test may stop it earlier: a registry that no longer answers)."""
    started = Registry(tmp_path / "registry", dict(os.environ))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[str]:
    """A docker daemon of the suite's own: private socket, data and exec roots in a temp dir, no networking
    of its own (no iptables, no bridge). Stopped, and its dir removed, at the end of the session. Its
    DOCKER_HOST (unix:///tmp/cdisk-test-dockerd-*/docker.sock); `docker_host` points a test at it.
    """
    if absent := missing_tools(FIXTURE_TOOLS["dockerd"]):
        if tools_required():
            pytest.fail(f"{', '.join(absent)} missing: run scripts/test, which installs everything")
        pytest.skip(skip_reason(absent))
    # In /tmp (not pytest's 0700 dir): the docker-group test's user must reach the socket. Held under a lock for
    # the session, as cdisk holds its temp dirs: what a suite killed before its end left is removed here, once its
    # dockerd (which dies with the suite) is gone and nothing is mounted under it.
    _sweep_dead_dockerd_dirs()
    held, made = leftovers.locked_dir("/tmp", "cdisk-test-dockerd-")
    root = Path(made)
    root.chmod(0o711)
    env = {name: value for name, value in os.environ.items() if name not in (TAG_VARIABLE, "TMPDIR", "DOCKER_HOST")}
    try:
        with private_dockerd(root, env) as host:
            yield host
    finally:
        # Nothing ran, and private_dockerd unmounted what its daemon left: its overlay2 dirs are plain files by now.
        shutil.rmtree(root, ignore_errors=True)
        os.close(held)


_DOCKERD_DIR = leftovers.Pattern(re.compile(r"cdisk-test-dockerd-[a-z0-9_]{8}"), is_dir=True)


def _sweep_dead_dockerd_dirs() -> None:
    """The dirs of suites that ended before their end (no lock held on them), what their dead dockerd left mounted
    taken back first; unless a dockerd still runs from one (its pid file names a live process) or something stays
    mounted under one: then all are left for later."""
    found = [path for path in Path("/tmp").glob("cdisk-test-dockerd-*") if _DOCKERD_DIR.name.fullmatch(path.name)]
    for path in found:
        with suppress(OSError, ValueError):
            os.kill(int((path / "dockerd.pid").read_text()), 0)
            return  # a dockerd still running
    for path in found:
        _unmount_if_dead(path)
    if not found or mounts_under([str(path) for path in found]):
        return
    leftovers.sweep("/tmp", (_DOCKERD_DIR,))


def _unmount_if_dead(path: Path) -> None:
    """What a dead suite's dockerd left mounted under `path` (dockerd 26's bind of its data root onto itself),
    unmounted while this holds the dir's lock: a live suite holds it, and its daemon's mounts are left alone."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            unmount_left(path)
        finally:
            os.close(fd)


@pytest.fixture
def docker_host(dockerd: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKER_HOST pointing this test (its docker commands and its cdisk runs) at the suite's dockerd; the
    tests that do not ask for it see no docker at all, whatever ran before them.
    """
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    return dockerd


@pytest.fixture
def remote(images: Images, registry: str) -> Iterator[Remote]:
    made = Remote(images, registry)
    yield made
    _forget(images, made)


@pytest.fixture
def logged_remote(images: Images, logged_registry: Registry) -> Iterator[Remote]:
    """A repository in this test's own registry (`logged_registry`: its log says what it was asked)."""
    made = Remote(images, logged_registry.address)
    yield made
    _forget(images, made)


def _forget(images: Images, made: Remote) -> None:
    """Every image of the remote's repository removed from the stores that may hold it."""
    repository = made.ref.rpartition(":")[0]
    for engine in dict.fromkeys((images.engine, "podman")):  # whatever pulled it
        sh(engine, "rmi", "-f", made.ref, check=False)
        # Every version pushed and pulled: an earlier one lingers untagged (`REPO:<none>`) once the tag moved.
        ids = sh(engine, "images", "--quiet", "--", repository, check=False).stdout.split()
        if ids:
            sh(engine, "rmi", "-f", *dict.fromkeys(ids), check=False)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file no qemu-img may read (it holds `SECRET`)."""
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path



@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory where nothing can be made (a read-only tmpfs of 1 MiB): a --tmpdir that a read in place never
    needs; unmounted when the test ends."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    mounted = sh("mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", readonly, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield readonly
    finally:
        sh("umount", readonly)
