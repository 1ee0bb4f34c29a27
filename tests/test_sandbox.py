"""qemu-img runs with no view of the host: a file an image names is not there to open, whatever format
names it. The header checks are bypassed here on purpose (qemu_img is called directly), so that only the
sandbox stands between the image and the host file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdisk.core.errors import ToolError, UnsafeImageError
from cdisk.core.progress import NoProgress
from cdisk.core.qemu import qemu_img, sandbox
from tests import hostile
from tests.conftest import Convert, Images, cdisk, same_disk
from tests.images import Entry, build_context, sh
from tests.tool_fakes import QemuImgFakes

SECRET = b"HOST-SECRET-" * 400


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


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


# --- through the real command line, on real images -------------------------------------------------


def test_hostile_vmdk_in_an_image_is_refused(images: Images, tmp_path: Path, secret: Path, convert: Convert) -> None:
    name = images.layers([Entry("disk/disk.vmdk", hostile.capacity_zero_vmdk(str(secret)))])
    result = convert("-q", name, tmp_path / "out.raw")
    assert result.code == 5, result.err
    assert "capacity 0" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "out.raw").exists()
    listed = cdisk("ls", "--json", name)
    [disk] = json.loads(listed.out)["disks"]
    assert "capacity 0" in disk["refused"]


def test_vhd_differencing_disk_in_an_image_is_refused(images: Images, tmp_path: Path, convert: Convert) -> None:
    disk = hostile.vpc_of_type(tmp_path / "child.vhd", 4)
    name = images.layers([Entry("disk/disk.vhd", disk.read_bytes())])
    result = convert(name, tmp_path / "out.raw")
    assert result.code == 5 and "VHD differencing disk" in result.err, result.err
    assert not (tmp_path / "out.raw").exists()


def _fake_bwrap(tmp_path: Path, script: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "bwrap"
    fake.write_text(script)
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_without_a_sandbox_only_raw_and_qcow2_are_read(images: Images, tmp_path: Path, convert: Convert) -> None:
    env = _fake_bwrap(tmp_path, "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    qcow2 = images.disk()
    ok = convert(images.build({"disk.qcow2": qcow2}), tmp_path / "q.raw", env=env)
    assert ok.code == 0, ok.err
    assert "qemu-img runs without a sandbox: bwrap cannot make a namespace here" in ok.err
    assert same_disk(qcow2, "qcow2", tmp_path / "q.raw", "raw")
    for fmt in ("vdi", "vmdk"):
        disk = images.disk(f"d.{fmt}", fmt)
        refused = convert(images.build({f"d.{fmt}": disk}), tmp_path / f"{fmt}.raw", env=env)
        assert refused.code == 5, refused.err
        assert f"the disk is {fmt}, which cdisk reads only with qemu-img in a sandbox" in refused.err
        assert "No permissions to creating new namespace" in refused.err
        assert not (tmp_path / f"{fmt}.raw").exists()


def test_a_qemu_img_its_limits_stop_is_a_refused_image(images: Images, tmp_path: Path, convert: Convert) -> None:
    # Reaching the 30 s CPU or 1 GiB limit for real takes a long run; what a kill looks like is injected.
    fakes = QemuImgFakes(tmp_path / "bin", {"check": "os.kill(os.getpid(), 9)"})
    name = images.build({"disk.qcow2": images.disk()})
    result = convert(name, tmp_path / "out.raw", env=fakes.env)
    assert fakes.subcommands() == ["info", "check"]
    assert result.code == 5, result.err
    assert "stopped by its memory or CPU limit" in result.err
    assert not (tmp_path / "out.raw").exists()


def test_a_check_that_prints_without_end_costs_cdisk_no_memory(images: Images, tmp_path: Path, method: str) -> None:
    disk = hostile.check_flood_qcow2(tmp_path / "flood.qcow2")
    name = images.build({"disk.qcow2": disk})
    disk.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "convert", "-q", "--method", method, name,
                             str(tmp_path / "out.raw")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _high_water_kib(proc.pid))
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 5, err
    assert b"corrupted" in err
    # `qemu-img check` printed ~470 MB of errors; buffering them whole took gigabytes.
    assert 0 < peak < 100 * 1024, f"cdisk peaked at {peak} KiB"


def _high_water_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o000])
def test_a_disk_only_its_owner_may_read_is_still_read(images: Images, tmp_path: Path, convert: Convert,
                                                      engine: str, mode: int) -> None:
    disk = images.disk()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "disk.qcow2").write_bytes(disk.read_bytes())
    (context / "disk.qcow2").chmod(mode)
    (context / "Containerfile").write_text("FROM scratch\nCOPY --chown=107:107 disk.qcow2 /disk/\n")
    name = build_context(context, engine)
    images.names.append(name)
    result = convert(name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
