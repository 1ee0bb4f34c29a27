"""Rootless podman: `auto` and `mount` read the disk inside `podman unshare`, writing a file the user owns."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import cdisk
from tests.helpers import Images
from tests.images import make_disk, sh
from tests.stores import storage_conf

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io")

USER = "cdisk-rootless"
DEPENDENCIES = ("podman", "plumbum", "rich", "requests", "urllib3", "idna", "charset_normalizer", "certifi",
                "markdown_it", "mdurl", "pygments", "typing_extensions")
REPO = Path(cdisk.__file__).resolve().parent.parent


@dataclass
class RootlessUser:
    name: str
    home: Path
    work: Path
    env: list[str]

    def run(self, *argv: str | Path, env: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """`argv` as the user; `env` (NAME=VALUE) comes after the fixture's own, so it wins."""
        return subprocess.run(["runuser", "-u", self.name, "--", "env", *self.env, *env, *map(str, argv)],
                              capture_output=True, text=True, cwd=self.work, stdin=subprocess.DEVNULL, timeout=300)

    @property
    def pythonpath(self) -> str:
        return next(item for item in self.env if item.startswith("PYTHONPATH=")).removeprefix("PYTHONPATH=")


def _processes_of(uid: int) -> list[int]:
    """The live (not zombie) processes whose real user is `uid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields and int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _owner(path: Path) -> int | None:
    """The uid owning `path`; None when it is gone (another job's temp file, removed meanwhile)."""
    try:
        return path.lstat().st_uid
    except FileNotFoundError:
        return None


def _remove_user(name: str) -> None:
    """Remove a user this module made, its podman storage reset first. Whatever still runs as it (rootless
    podman's pause process) was started here, as no one else had the user: it is stopped before `userdel`.
    """
    uid = int(sh("id", "-u", name).stdout)
    reset = subprocess.run(["runuser", "-u", name, "--", "env", f"HOME=/home/{name}", f"PATH={os.environ['PATH']}",
                            "XDG_RUNTIME_DIR=", "podman", "system", "reset", "--force"],
                           capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL, timeout=300)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_of(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + 10
        while _processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # What its podman keeps outside its home (XDG_RUNTIME_DIR is empty: /tmp/podman-run-UID, …) is its own too.
    for entry in [*Path("/tmp").iterdir(), *Path("/var/tmp").iterdir()]:
        if _owner(entry) != uid:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    removed = sh("userdel", "-r", name, check=False)
    assert removed.returncode == 0, f"userdel -r {name}: {removed.stderr}"
    assert sh("id", name, check=False).returncode != 0 and not Path(f"/home/{name}").exists()
    assert reset.returncode == 0, f"podman system reset of {name}: {reset.stderr}"


@pytest.fixture(scope="module")
def rootless() -> Iterator[RootlessUser]:
    """A rootless podman user made for this module and removed again after it. A user of that name that was
    there before is used and left as it was: its storage is not reset, only this module's image removed.
    """
    if os.geteuid() != 0 or not shutil.which("runuser") or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to make a user), runuser and a system python3")
    with contextlib.ExitStack() as cleanup:
        # One run at a time on this machine has the user: another run's module waits here until this one has
        # removed it, rather than find it there, use it, and lose it half-way.
        lock = os.open(Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp", "cdisk-test-rootless.lock"),
                       os.O_RDWR | os.O_CREAT, 0o600)
        cleanup.callback(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if sh("id", USER, check=False).returncode != 0:
            sh("useradd", "-m", "-s", "/bin/sh", USER)
            cleanup.callback(_remove_user, USER)
        home = Path(f"/home/{USER}")
        work = Path(tempfile.mkdtemp(prefix="rootless-"))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        # The user runs the system python on a copy of the package (in its installed layout) and of its
        # pure-Python dependencies: the checkout, the venv and its python may live where root alone may go.
        pkg = work / "pkg"
        shutil.copytree(REPO / "cdisk", pkg / "cdisk", ignore=shutil.ignore_patterns("__pycache__"))
        for part in ("cli", "core"):
            shutil.copytree(REPO / part, pkg / "cdisk" / part, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)  # an installed layout holds them already
        for module in DEPENDENCIES:
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin is not None, module
            origin = Path(spec.origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, pkg / module, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, pkg / origin.name)
        sh("chown", "-R", f"{USER}:{USER}", work)
        sh("chmod", "755", work)
        user = RootlessUser(USER, home, work, [f"HOME={home}", f"PYTHONPATH={pkg}", f"PATH={os.environ['PATH']}",
                                               "XDG_RUNTIME_DIR="])
        info = user.run("podman", "info", "--format", "{{.Host.Security.Rootless}}")
        if info.stdout.strip() != "true":
            pytest.skip(f"rootless podman does not work here: {info.stderr.strip()[-300:]}")
        yield user


@contextlib.contextmanager
def _user_image(rootless: RootlessUser, context: Path, env: Sequence[str] = ()) -> Iterator[tuple[str, Path]]:
    """A containerDisk built by the user (in the store `env` names), removed again at the end."""
    context.mkdir()
    disk = make_disk(context / "disk.qcow2")
    (context / "Containerfile").write_text("FROM scratch\nCOPY disk.qcow2 /disk/\n")
    sh("chown", "-R", f"{USER}:{USER}", context)
    name = f"localhost/cdisk-rootless-test-{uuid.uuid4().hex[:12]}"
    built = rootless.run("podman", "build", "-q", "-t", name, context, env=env)
    assert built.returncode == 0, built.stderr
    yield name, disk
    removed = rootless.run("podman", "rmi", "-f", name, env=env)
    assert removed.returncode == 0, removed.stderr


@pytest.fixture(scope="module")
def rootless_image(rootless: RootlessUser) -> Iterator[tuple[str, Path]]:
    """An image in the user's own store, of podman's rootless default driver (podman 4.3 here: vfs; 5: overlay)."""
    with _user_image(rootless, rootless.work / "ctx") as image:
        yield image


@pytest.fixture(scope="module")
def child_image(rootless: RootlessUser) -> Iterator[tuple[str, Path, list[str]]]:
    """An image in a vfs store of the user's (with the env that names it): no layer directories to read, so
    `auto` converts in a child inside `podman unshare` whatever podman's rootless default — on podman 5's overlay
    store it would read the layers with no namespace at all, and no child would be tested."""
    store = rootless.work / "vfs-store"
    store.mkdir()
    env = [f"CONTAINERS_STORAGE_CONF={storage_conf(store / 'storage.conf', store, 'vfs')}"]
    sh("chown", "-R", f"{USER}:{USER}", store)
    with _user_image(rootless, rootless.work / "ctx-vfs", env) as (name, disk):
        yield name, disk, env


def mounts(user: RootlessUser, env: Sequence[str] = ()) -> str:
    """The user's image mounts, as its `podman unshare` sees them (a failed listing fails the test)."""
    listed = user.run("podman", "unshare", "podman", "image", "mount", env=env)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.strip()


def test_rootless_layers_read_the_users_own_store(rootless: RootlessUser,
                                                  rootless_image: tuple[str, Path]) -> None:
    name, disk = rootless_image
    target = rootless.work / "out-layers.raw"
    driver = rootless.run("podman", "info", "--format", "{{.Store.GraphDriverName}}").stdout.strip()
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--json", "--method", "layers", name, target)
    if driver != "overlay":
        # vfs (no overlay for this user here): refused with the way out, nothing left behind.
        assert result.returncode == 7, result.stderr
        assert f"the store is {driver}, not overlay; use --method save (or mount, with podman)" in result.stderr
        assert not target.exists()
        return
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == "layers"
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
    assert mounts(rootless) == ""  # no mount, and no podman unshare either


@pytest.mark.parametrize(("method", "used"), [("auto", "mount"), ("mount", "mount"), ("save", "save")])
def test_rootless_convert(rootless: RootlessUser, rootless_image: tuple[str, Path], method: str, used: str) -> None:
    name, disk = rootless_image
    target = rootless.work / f"out-{method}.raw"
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--json", "--method", method, name, target)
    assert result.returncode == 0, result.stderr
    if method == "auto" and rootless.run("podman", "info", "--format", "{{.Store.GraphDriverName}}").stdout.strip() \
            == "overlay":
        used = "layers"  # the user's own overlay layer directories: no namespace needed at all
    assert json.loads(result.stdout)["method"] == used
    assert target.stat().st_uid == int(sh("id", "-u", USER).stdout)
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
    assert mounts(rootless) == ""
    assert [p.name for p in rootless.work.iterdir() if ".cdisk-" in p.name] == []


@pytest.mark.parametrize("method", ["mount", "auto"])
def test_rootless_refusal_keeps_its_exit_code(rootless: RootlessUser, rootless_image: tuple[str, Path],
                                              method: str) -> None:
    name, _ = rootless_image
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--method", method,
                          "--path", "/disk/absent", name, rootless.work / "x.raw")
    assert result.returncode == 4 and "/disk/absent does not exist in the image" in result.stderr
    assert "falling back" not in result.stderr and "save method" not in result.stderr


# Faults the child inside `podman unshare` cannot survive, injected for real: a sitecustomize (first on
# the user's PYTHONPATH) whose audit hook strikes when the child — root in its namespace, which the
# parent never is — starts qemu-img, after the mount: a Python exception, or death by SIGKILL.
_FAULTS = {
    "exception": "raise RuntimeError('injected fault in the rootless child')",
    "sigkill": "os.kill(os.getpid(), signal.SIGKILL)",
}


def _faulty_site(directory: Path, fault: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(f"""import os, signal, sys
def _hook(event, args):
    if event == "subprocess.Popen" and os.geteuid() == 0 and "qemu-img" in repr(args[1]):
        {_FAULTS[fault]}
sys.addaudithook(_hook)
""")
    sh("chown", "-R", f"{USER}:{USER}", directory)
    return directory


@pytest.mark.parametrize("fault", sorted(_FAULTS))
@pytest.mark.parametrize("method", ["auto", "mount"])
def test_a_crash_in_the_child_is_reported_not_fallen_back_from(
    rootless: RootlessUser, child_image: tuple[str, Path, list[str]], fault: str, method: str
) -> None:
    name, _, store = child_image
    site = _faulty_site(rootless.work / f"site-{fault}", fault)
    target = rootless.work / f"crash-{fault}-{method}.raw"
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--method", method, name, target,
                          env=[f"PYTHONPATH={site}:{rootless.pythonpath}", *store])
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("cdisk: error: the conversion inside podman unshare crashed: "), result.stderr
    # A killed child leaves no traceback: its exit code (podman unshare reports 255 for a signal) is all there is.
    expected = "RuntimeError: injected fault in the rootless child" if fault == "exception" else r"exit code \d+"
    assert re.search(f"crashed: {expected}; please report it", last), last
    assert "falling back" not in result.stderr and "save method" not in result.stderr
    assert not target.exists()
    if fault == "sigkill":
        # No `finally` runs in a killed child: its one mount is left, as after any SIGKILL; take it back.
        image_id = rootless.run("podman", "image", "inspect", "--format", "{{.Id}}", name, env=store).stdout.strip()
        rootless.run("podman", "unshare", "podman", "image", "unmount", image_id, env=store)
        for partial in rootless.work.glob(f".{target.name}.*.cdisk-part"):
            partial.unlink()
        return
    assert [p.name for p in rootless.work.iterdir() if ".cdisk-" in p.name] == []
    assert mounts(rootless, store) == ""


def test_auto_falls_back_when_podman_unshare_cannot_start_the_child(
    rootless: RootlessUser, child_image: tuple[str, Path, list[str]]
) -> None:
    name, disk, store = child_image
    # Where user namespaces are not allowed, `podman unshare` fails before it runs anything.
    bin_dir = rootless.work / "no-userns-bin"
    bin_dir.mkdir(exist_ok=True)
    real = sh("which", "podman").stdout.strip()
    (bin_dir / "podman").write_text(f"""#!/bin/sh
if [ "$1" = unshare ]; then
    echo 'Error: cannot set up namespace using "/usr/bin/newuidmap": exit status 1' >&2
    exit 125
fi
exec {real} "$@"
""")
    (bin_dir / "podman").chmod(0o755)
    sh("chown", "-R", f"{USER}:{USER}", bin_dir)
    target = rootless.work / "fallback.raw"
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "-v", "--json", name, target,
                          env=[f"PATH={bin_dir}:{os.environ['PATH']}", *store])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == "save"
    assert "falling back to the save method" in result.stderr
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
    refused = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "-q", "--method", "mount", name,
                           rootless.work / "no-fallback.raw", env=[f"PATH={bin_dir}:{os.environ['PATH']}", *store])
    assert refused.returncode == 7 and "podman unshare failed" in refused.stderr and "newuidmap" in refused.stderr


def test_debug_shows_the_crashed_childs_own_traceback(rootless: RootlessUser,
                                                     child_image: tuple[str, Path, list[str]]) -> None:
    name, _, store = child_image
    site = _faulty_site(rootless.work / "site-exception", "exception")
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--debug", name, rootless.work / "debug.raw",
                          env=[f"PYTHONPATH={site}:{rootless.pythonpath}", *store])
    assert result.returncode == 1
    child = result.stderr.split(" said:\n", 1)[1]
    assert "Traceback (most recent call last)" in child and "in _hook" in child


@pytest.mark.needs("docker", "dockerd")
def test_a_docker_group_user_reads_the_disk_inside_the_saved_archive(
        rootless: RootlessUser, docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A user who may use docker's socket but not read /var/lib/docker: `auto` saves, and the disk is read
    inside `docker save`'s archive; asking for the layer directories says why not.
    """
    socket = Path(docker_host.removeprefix("unix://"))
    images = Images(tmp_path_factory.mktemp("docker-images"), "docker")
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    os.chown(socket, 0, grp.getgrnam(USER).gr_gid)  # what joining the docker group gives
    try:
        target = rootless.work / "docker.raw"
        env = [f"DOCKER_HOST={docker_host}"]
        result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--json", name, target, env=env)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert (data["engine"], data["method"]) == ("docker", "save")
        assert target.stat().st_uid == int(sh("id", "-u", USER).stdout)
        assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
        assert [p.name for p in rootless.work.iterdir() if ".cdisk-" in p.name] == []
        refused = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "-q", "--method", "layers", name,
                               rootless.work / "layers.raw", env=env)
        assert refused.returncode == 7 and "not readable by this user" in refused.stderr
        assert not (rootless.work / "layers.raw").exists()
    finally:
        os.chown(socket, 0, 0)
        images.remove()


@pytest.mark.needs("qemu-storage-daemon")
@pytest.mark.parametrize("method", ["auto", "save"])
def test_rootless_serve(rootless: RootlessUser, rootless_image: tuple[str, Path], method: str) -> None:
    """A user serves its own image, on a socket in its own temp dir; stopped, nothing of it is left."""
    name, disk = rootless_image
    proc = subprocess.Popen(["runuser", "-u", rootless.name, "--", "env", *rootless.env, "/usr/bin/python3", "-m",
                             "cdisk", "serve", "--json", "--method", method, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=rootless.work)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1]
        served = json.loads(line)
        socket_dir = Path(served["socket"]).parent
        assert socket_dir.stat().st_uid == int(sh("id", "-u", USER).stdout) and socket_dir.stat().st_mode & 0o077 == 0
        assert sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", served["uri"], disk, check=False).returncode == 0
    finally:
        # To cdisk itself (runuser's child): runuser would end the session with its own SIGKILL 2 s later.
        for child in _children(proc.pid):
            os.kill(child, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not socket_dir.exists()
    assert mounts(rootless) == ""
