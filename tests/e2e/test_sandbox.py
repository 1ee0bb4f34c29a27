"""The sandbox through the real command line, on real images: hostile disks refused in one line, what is read
when bwrap cannot make a namespace, a qemu-img stopped by its limits, and a disk only its owner may read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import hostile
from tests.helpers import Convert, Images, assert_one_line_error, cdisk, same_disk
from tests.images import Entry, build_context
from tests.tool_fakes import QemuImgFakes


def test_hostile_vmdk_in_an_image_is_refused(images: Images, tmp_path: Path, secret: Path, convert: Convert) -> None:
    name = images.layers([Entry("disk/disk.vmdk", hostile.capacity_zero_vmdk(str(secret)))])
    result = convert("-q", name, tmp_path / "out.raw")
    assert_one_line_error(result, 5, "capacity 0")
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
    assert sorted(fakes.subcommands()) == ["check", "info"]  # at once (qemu_img.info_and_check)
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
