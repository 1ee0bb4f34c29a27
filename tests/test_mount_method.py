"""What only the mount method has: reference-counted mounts and a disk pinned while it is read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.conftest import Images, cdisk, same_disk
from tests.images import sh


def test_someone_elses_mount_is_left_alone(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    theirs = sh("podman", "image", "mount", name).stdout.strip()
    try:
        result = cdisk("convert", "--method", "mount", name, tmp_path / "out.raw")
        assert result.code == 0, result.err
        assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
        assert theirs in sh("podman", "image", "mount").stdout  # still mounted for them
    finally:
        sh("podman", "image", "unmount", name)


def test_auto_mounts_as_root(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("convert", "--json", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert json.loads(result.out)["method"] == ("mount" if os.geteuid() == 0 else "save")


def test_image_removed_while_reading_still_gives_its_disk(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    real = sh("which", "qemu-img").stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qemu-img").write_text(f"""#!{sys.executable}
import os, subprocess, sys
if sys.argv[1] == "convert":
    subprocess.run(["podman", "rmi", "-f", {name!r}], capture_output=True)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
""")
    (bin_dir / "qemu-img").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = cdisk("convert", "--method", "mount", name, tmp_path / "out.raw", env=env)
    assert sh("podman", "image", "exists", name, check=False).returncode == 1  # it really went
    # qemu-img reads through the descriptor cdisk holds, so the removed image's disk is still what it reads.
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
