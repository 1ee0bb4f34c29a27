"""What only the mount method has: reference-counted mounts and a disk pinned while it is read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Images, cdisk, same_disk, wait_for
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


def test_interrupt_while_mounting_gives_the_mount_back(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    real = sh("which", "podman").stdout.strip()
    started = tmp_path / "mounting"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A `podman image mount` that has mounted but not yet answered when the interrupt lands.
    (bin_dir / "podman").write_text(
        f'#!/bin/sh\nif [ "$1" = image ] && [ "$2" = mount ]; then\n'
        f'  out=$({real} "$@") || exit $?; touch {started}; sleep 1; echo "$out"; exit 0\nfi\nexec {real} "$@"\n'
    )
    (bin_dir / "podman").chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "convert", "-q", "--method", "mount", name,
                             str(tmp_path / "out.raw")], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: started.exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert name not in sh("podman", "image", "mount").stdout
    assert not (tmp_path / "out.raw").exists()
