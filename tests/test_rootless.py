"""Rootless podman: `auto` and `mount` read the disk inside `podman unshare`, writing a file the user owns."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cdisk
from tests.images import make_disk, sh

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

    def run(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", self.name, "--", "env", *self.env, *map(str, argv)],
                              capture_output=True, text=True, cwd=self.work, stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="module")
def rootless() -> Iterator[RootlessUser]:
    if os.geteuid() != 0 or not shutil.which("runuser") or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to make a user), runuser and a system python3")
    if sh("id", USER, check=False).returncode != 0:
        sh("useradd", "-m", "-s", "/bin/sh", USER)
    home = Path(f"/home/{USER}")
    # The user runs the system python on a copy of the package (in its installed layout) and of its
    # pure-Python dependencies: the checkout, the venv and its python may live where root alone may go.
    work = Path(tempfile.mkdtemp(prefix="rootless-"))
    pkg = work / "pkg"
    shutil.copytree(REPO / "cdisk", pkg / "cdisk", ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("cli", "core"):
        shutil.copytree(REPO / part, pkg / "cdisk" / part, ignore=shutil.ignore_patterns("__pycache__"))
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
        shutil.rmtree(work)
        pytest.skip(f"rootless podman does not work here: {info.stderr.strip()[-300:]}")
    yield user
    user.run("podman", "system", "reset", "--force")
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def rootless_image(rootless: RootlessUser) -> Iterator[tuple[str, Path]]:
    context = rootless.work / "ctx"
    context.mkdir()
    disk = make_disk(context / "disk.qcow2")
    (context / "Containerfile").write_text("FROM scratch\nCOPY disk.qcow2 /disk/\n")
    sh("chown", "-R", f"{USER}:{USER}", context)
    built = rootless.run("podman", "build", "-q", "-t", "localhost/cdisk-rootless-test", context)
    assert built.returncode == 0, built.stderr
    yield "localhost/cdisk-rootless-test", disk


@pytest.mark.parametrize(("method", "used"), [("auto", "mount"), ("mount", "mount"), ("save", "save")])
def test_rootless_convert(rootless: RootlessUser, rootless_image: tuple[str, Path], method: str, used: str) -> None:
    name, disk = rootless_image
    target = rootless.work / f"out-{method}.raw"
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "--json", "--method", method, name, target)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == used
    assert target.stat().st_uid == int(sh("id", "-u", USER).stdout)
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
    assert rootless.run("podman", "unshare", "podman", "image", "mount").stdout.strip() == ""
    assert [p.name for p in rootless.work.iterdir() if ".cdisk-" in p.name] == []


def test_rootless_refusal_keeps_its_exit_code(rootless: RootlessUser, rootless_image: tuple[str, Path]) -> None:
    name, _ = rootless_image
    result = rootless.run("/usr/bin/python3", "-m", "cdisk", "convert", "-q", "--method", "mount",
                          "--path", "/disk/absent", name, rootless.work / "x.raw")
    assert result.returncode == 4 and "/disk/absent does not exist in the image" in result.stderr
