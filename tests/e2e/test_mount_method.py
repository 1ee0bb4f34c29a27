"""What only the mount method has: reference-counted mounts, a disk pinned while it is read, and a view of the
image that never reaches the host (the same answers as the save method on hostile images)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Images, Run, cdisk, same_disk, wait_for
from tests.images import Entry, sh
from tests.tool_fakes import QemuImgFakes


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


def test_auto_reads_the_layer_directories_where_it_can(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("convert", "--json", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    overlay = sh("podman", "info", "--format", "{{.Store.GraphDriverName}}").stdout.strip() == "overlay"
    expected = "layers" if overlay else "mount" if os.geteuid() == 0 else "save"
    assert json.loads(result.out)["method"] == expected


def test_image_removed_while_reading_still_gives_its_disk(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    remove = ["podman", "rmi", "-f", name]
    runs = QemuImgFakes(tmp_path / "bin", {"convert": f"subprocess.run({remove!r}, capture_output=True)"})
    result = cdisk("convert", "--method", "mount", name, tmp_path / "out.raw", env=runs.env)
    assert "convert" in runs.subcommands()
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


def _hostile_cases(disk: bytes) -> dict[str, list[Entry]]:
    return {
        "disk-to-root": [Entry("disk", symlink="/")],
        # The host has a directory /etc; the image a file: only the image's may count.
        "disk-to-root-file-named-etc": [Entry("disk", symlink="/"), Entry("etc", disk)],
        "disk-to-host-etc": [Entry("disk", symlink="/etc")],
        "disk-to-nonexistent": [Entry("disk", symlink="/nonexistent")],
        "disk-climbs": [Entry("disk", symlink="../..")],
        "disk-file-to-passwd": [Entry("disk", directory=True), Entry("disk/x", symlink="/etc/passwd")],
        "nested-links-to-host": [Entry("disk", symlink="a"), Entry("a", symlink="b"), Entry("b", symlink="/etc")],
        "disk-to-own-etc": [Entry("etc", directory=True), Entry("etc/vm.qcow2", disk), Entry("disk", symlink="/etc")],
        "disk-under-link-inside": [Entry("images/x", directory=True), Entry("images/x/vm.qcow2", disk),
                                   Entry("disk", symlink="images/x")],
    }


CASE_NAMES = list(_hostile_cases(b""))


def errors(run: Run) -> list[str]:
    """The error lines (progress lines name the method, so they differ by design)."""
    return [line for line in run.err.splitlines() if line.startswith("cdisk: error:")]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_both_methods_give_the_same_answer(images: Images, tmp_path: Path, case: str) -> None:
    disk = images.disk()
    name = images.layers(_hostile_cases(disk.read_bytes())[case])
    saved = cdisk("convert", "--method", "save", name, tmp_path / "save.raw")
    mounted = cdisk("convert", "--method", "mount", name, tmp_path / "mount.raw")
    assert (mounted.code, errors(mounted)) == (saved.code, errors(saved))
    if saved.code == 0:
        assert same_disk(disk, "qcow2", tmp_path / "save.raw", "raw")
        assert same_disk(disk, "qcow2", tmp_path / "mount.raw", "raw")
    else:
        assert saved.code in (4, 5), saved.err
        # Nothing the host holds at /etc or / shows through (the image names neither passwd nor usr).
        assert "hostname" not in mounted.err and "/disk/usr" not in mounted.err, mounted.err


def test_found_lists_the_image_not_the_host(images: Images, tmp_path: Path) -> None:
    name = images.layers([Entry("disk", symlink="/etc")])
    result = cdisk("convert", "--method", "mount", name, tmp_path / "out.raw")
    assert result.code == 4
    assert errors(result) == [("cdisk: error: no disk file directly under /disk/ (/disk is a symlink to /etc, "
                                  "which leads to no directory inside the image); pass --path with the disk "
                                  "file's path in the image")]
