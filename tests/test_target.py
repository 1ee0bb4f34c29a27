"""The target: block devices, space and size limits, a full disk, signals — and nothing lost on failure."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Convert, Images, cdisk, same_disk
from tests.images import sh


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"\x5a" * (8 << 20))
    attached = sh("losetup", "-f", "--show", backing, check=False)
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = Path(attached.stdout.strip())
    yield device
    sh("losetup", "-d", device)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = sh("mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", mountpoint, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    sh("umount", mountpoint)


def test_block_device_is_written_in_place_with_force(convert: Convert, images: Images, loop_device: Path) -> None:
    disk = images.disk(size="8M")
    name = images.build({"disk.qcow2": disk})
    refused = convert(name, loop_device)
    assert refused.code == 6 and "--force" in refused.err
    result = convert("--force", name, loop_device)
    assert result.code == 0, result.err
    assert stat.S_ISBLK(os.stat(loop_device).st_mode)
    # Every byte, zeros included, must be the disk's: the device held 0x5a before.
    assert same_disk(disk, "qcow2", loop_device, "raw")


def test_block_device_too_small(convert: Convert, images: Images, loop_device: Path) -> None:
    name = images.build({"disk.qcow2": images.disk(size="16M")})
    result = convert("-q", "--force", name, loop_device)
    assert result.code == 6 and "use a larger device" in result.err


def test_block_device_takes_raw_only(convert: Convert, images: Images, loop_device: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = convert("-q", "--force", "-O", "qcow2", name, loop_device)
    assert result.code == 6 and "raw only" in result.err


def test_not_enough_space_is_refused_before_writing(
    convert: Convert, images: Images, small_fs: Path, tmp_path: Path
) -> None:
    disk = images.disk("full.raw", fmt="raw", size="4M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", disk)
    name = images.build({"full.raw": disk})
    result = convert("-q", "--tmpdir", tmp_path, name, small_fs / "out.raw")
    assert result.code == 6 and "free" in result.err
    assert list(small_fs.iterdir()) == []


def test_file_size_limit_is_refused(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk(size="64M")})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    proc = subprocess.run(
        [sys.executable, "-m", "cdisk", "convert", "-q", name, tmp_path / "out.raw"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    assert proc.returncode == 6 and "cannot hold a file of 67108864 bytes" in proc.stderr
    assert not (tmp_path / "out.raw").exists()


def _fake_qemu_img(bin_dir: Path, convert_body: str) -> dict[str, str]:
    """A qemu-img that behaves for real except in `convert`: fault injection for what cannot be staged."""
    real = sh("which", "qemu-img").stdout.strip()
    script = bin_dir / "qemu-img"
    script.write_text(f"""#!{sys.executable}
import os, sys, time
if sys.argv[1] != "convert":
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
target = sys.argv[-1]
{convert_body}
""")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_disk_full_while_writing_leaves_nothing(convert: Convert, images: Images, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = _fake_qemu_img(
        bin_dir,
        """
open(target, "wb").write(b"half a disk")
sys.stderr.write("qemu-img: error while writing at byte 0: No space left on device\\n")
sys.exit(1)
""",
    )
    name = images.build({"disk.qcow2": images.disk()})
    out = tmp_path / "out"
    out.mkdir()
    (out / "disk.raw").write_bytes(b"previous")
    result = convert("-q", "--force", name, out / "disk.raw", env=env)
    assert result.code == 6 and "ran out of space" in result.err
    assert (out / "disk.raw").read_bytes() == b"previous"
    assert [p.name for p in out.iterdir()] == ["disk.raw"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_conversion_leaves_nothing(images: Images, tmp_path: Path, signum: int) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = _fake_qemu_img(bin_dir, "open(target, 'wb').write(b'partial'); time.sleep(120)")
    name = images.build({"disk.qcow2": images.disk()})
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdisk", "convert", "-q", name, out / "disk.raw"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".cdisk-part") and p.stat().st_size for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert "interrupted" in err
    assert list(out.iterdir()) == []


def test_target_is_zero_on_a_fresh_device(images: Images, tmp_path: Path) -> None:
    disk = images.disk(size="8M")
    name = images.build({"disk.qcow2": disk})
    backing = tmp_path / "zero.img"
    backing.write_bytes(bytes(8 << 20))
    attached = sh("losetup", "-f", "--show", backing, check=False)
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        result = cdisk("convert", "--force", "--target-is-zero", name, device)
        assert result.code == 0, result.err
        assert same_disk(disk, "qcow2", Path(device), "raw")
    finally:
        sh("losetup", "-d", device)
    refused = cdisk("convert", "-q", "--force", "--target-is-zero", name, tmp_path / "file.raw")
    assert refused.code == 2 and "--target-is-zero is for an existing block device" in refused.err
