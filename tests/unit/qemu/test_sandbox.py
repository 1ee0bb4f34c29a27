"""qemu-img runs with no view of the host: a file an image names is not there to open, whatever format
names it. The header checks are bypassed here on purpose (qemu_img is called directly), so that only the
sandbox stands between the image and the host file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cdisk.core.errors import ToolError, UnsafeImageError
from cdisk.core.progress import NoProgress
from cdisk.core.qemu import qemu_img, sandbox
from tests import hostile
from tests.helpers import SECRET
from tests.images import sh

# qemu-img runs as cdisk runs it: inside bwrap.
pytestmark = pytest.mark.needs("qemu-img", "bwrap")


def _vmdk(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return qemu_img.image_spec("vmdk", qemu_img.file_node(str(path)))


def _qcow2_backed_by(path: Path, backing: Path) -> str:
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", path, "4k")
    # Built without `"backing": null`, the spec's own guard: only the sandbox is left to stop the read.
    return "json:" + json.dumps({"driver": "qcow2", "file": qemu_img.file_node(str(path))})


def _qcow2_with_data_file(path: Path, data_file: Path) -> str:
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={data_file},data_file_raw=on", path,
       str(len(SECRET)))
    return qemu_img.image_spec("qcow2", qemu_img.file_node(str(path)))


HOSTILE: dict[str, Callable[[Path, Path], str]] = {
    "vmdk capacity 0, flat extent": lambda d, s: _vmdk(d / "a.vmdk", hostile.capacity_zero_vmdk(str(s))),
    "vmdk createType by strstr": lambda d, s: _vmdk(
        d / "b.vmdk", hostile.capacity_zero_vmdk(str(s), b'createType:"monolithicFlat"')),
    "vmdk two-GB flat extent": lambda d, s: _vmdk(
        d / "c.vmdk", hostile.capacity_zero_vmdk(str(s), b'createType="twoGbMaxExtentFlat"')),
    "vmdk extent beside the disk": lambda d, s: _vmdk(d / "e.vmdk", hostile.capacity_zero_vmdk(s.name)),
    "qcow2 backing file": lambda d, s: _qcow2_backed_by(d / "f.qcow2", s),
    "qcow2 external data file": lambda d, s: _qcow2_with_data_file(d / "g.qcow2", s),
}


# `qemu-img info` opens no backing file by itself; every other case it opens.
@pytest.mark.parametrize("case", sorted(set(HOSTILE) - {"qcow2 backing file", "qcow2 external data file"}))
def test_info_cannot_open_what_the_image_names(tmp_path: Path, secret: Path, case: str) -> None:
    spec = HOSTILE[case](tmp_path, secret)
    with pytest.raises(UnsafeImageError, match="No such file or directory"):
        qemu_img.info(spec)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_convert_puts_no_host_byte_in_the_target(tmp_path: Path, secret: Path, case: str) -> None:
    spec = HOSTILE[case](tmp_path, secret)
    target = tmp_path / "out.raw"
    target.touch()
    with pytest.raises(ToolError, match="No such file or directory"):
        qemu_img.convert(spec, str(target), qemu_img.ConvertOptions("raw"), NoProgress())
    assert b"HOST-SECRET" not in target.read_bytes()


def test_an_extent_naming_a_fifo_does_not_hang_info(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    spec = _vmdk(tmp_path / "fifo.vmdk", hostile.capacity_zero_vmdk(str(fifo)))
    # Unconfined, qemu-img would block opening the FIFO until the wall-clock limit; confined it is absent.
    with pytest.raises(UnsafeImageError, match="No such file or directory"):
        qemu_img.info(spec)


def test_the_sandbox_holds_no_host_file_but_the_view(tmp_path: Path, secret: Path) -> None:
    shown = tmp_path / "shown"
    shown.write_text("visible")
    script = f"cat {shown}; echo @; cat {secret}; echo @; ls -A /; echo @; ls -A /etc; echo > {shown}"
    argv = sandbox.confine(["/usr/bin/sh", "-c", script], sandbox.View(read_only=(str(shown),)))
    run = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    shown_text, secret_text, roots, etc = run.stdout.split("@")
    assert (shown_text, secret_text.strip()) == ("visible", "")
    assert set(roots.split()) <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "proc", "dev", "tmp", "etc"}
    assert etc.split() == ["ld.so.cache"]
    assert "Read-only file system" in run.stderr  # the read-only view cannot be written either
    assert shown.read_text() == "visible"


def test_a_probe_left_running_at_exit_does_not_hold_cdisk(tmp_path: Path) -> None:
    # A probe whose sandbox keeps its stderr open after it was killed (the sandbox's own init outlives it): the
    # run still ends at once. (It waited for the pipe's end: 120 s, once, in a test.)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / sandbox.BWRAP
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {tmp_path / 'held'}\nexec sleep 60\n")
    fake.chmod(0o755)
    code = "import time; from cdisk.core.qemu import sandbox; sandbox.start_probe(); time.sleep(0.5)"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    try:
        subprocess.run([sys.executable, "-c", code], env=env, timeout=20, check=True)
    finally:
        held = tmp_path / "held"
        if held.exists():
            os.kill(int(held.read_text()), signal.SIGKILL)
