"""The target: block devices, space and size limits, a full disk, signals — and nothing lost on failure."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.devices import loop_device as attached_loop
from tests.helpers import Convert, Images, Run, assert_one_line_error, cdisk, same_disk
from tests.images import sh
from tests.tool_fakes import QemuImgFakes, faulty_convert


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    with attached_loop(tmp_path / "loop.img") as device:
        yield device


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


def test_a_raw_target_longer_than_the_free_space_needs_room_for_its_data_only(
    convert: Convert, images: Images, small_fs: Path, tmp_path: Path
) -> None:
    # 64 MiB long, 196 KiB of data, on a 3 MiB filesystem: qemu-img check's allocated clusters bound the data,
    # so no qemu-img measure runs; 4 MiB of data cannot fit: then measure says so, before anything is written.
    sparse = images.disk("sparse.qcow2", size="64M")
    fakes = QemuImgFakes(tmp_path / "bin")
    result = convert("-q", "--tmpdir", tmp_path, images.build({"sparse.qcow2": sparse}), small_fs / "out.raw",
                     env=fakes.env)
    assert result.code == 0, result.err
    assert same_disk(sparse, "qcow2", small_fs / "out.raw", "raw")
    assert "measure" not in fakes.subcommands() and "check" in fakes.subcommands()
    (small_fs / "out.raw").unlink()

    dense = images.disk("dense.qcow2", size="64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 8M 4M", dense)
    fakes = QemuImgFakes(tmp_path / "bin2")
    result = convert("-q", "--tmpdir", tmp_path, images.build({"dense.qcow2": dense}), small_fs / "out.raw",
                     env=fakes.env)
    assert result.code == 6 and "free" in result.err
    assert "measure" in fakes.subcommands() and "convert" not in fakes.subcommands()
    assert list(small_fs.iterdir()) == []

    # 512-byte clusters, one in every 4 KiB: 512 KiB of clusters, but 4 MiB of the raw file's blocks.
    scattered = tmp_path / "scattered.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", scattered, "64M")
    sh("qemu-io", "-f", "qcow2", *(arg for n in range(1024) for arg in ("-c", f"write -P 0x44 {n * 4096} 512")),
       scattered)
    fakes = QemuImgFakes(tmp_path / "bin3")
    result = convert("-q", "--tmpdir", tmp_path, images.build({"scattered.qcow2": scattered}), small_fs / "out.raw",
                     env=fakes.env)
    assert result.code == 6 and "free" in result.err
    assert "measure" in fakes.subcommands() and "convert" not in fakes.subcommands()
    assert list(small_fs.iterdir()) == []


def test_formats_qemu_img_cannot_measure_are_bounded_before_writing(
    images: Images, small_fs: Path, tmp_path: Path
) -> None:
    # vmdk, vdi, parallels have no qemu-img measure (it fails: exit 7 once): their room is bounded from the data.
    # 64 MiB, 196 KiB of data: a vmdk fits the 3 MiB filesystem, by qemu-img check's count alone.
    sparse = images.disk("sparse.qcow2", size="64M")
    fakes = QemuImgFakes(tmp_path / "bin")
    result = cdisk("convert", "-q", "-O", "vmdk", "--tmpdir", tmp_path, images.build({"sparse.qcow2": sparse}),
                   small_fs / "out.vmdk", env=fakes.env)
    assert result.code == 0, result.err
    assert same_disk(sparse, "qcow2", small_fs / "out.vmdk", "vmdk")
    assert "measure" not in fakes.subcommands()
    (small_fs / "out.vmdk").unlink()

    # 4 KiB in every 4 MiB: 64 KiB of data, but a vdi writes its 1 MiB blocks whole: 16 MiB cannot fit.
    scattered = tmp_path / "scattered.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", scattered, "64M")
    sh("qemu-io", "-f", "qcow2", *(a for n in range(16) for a in ("-c", f"write -P 0x55 {n << 22} 4k")), scattered)
    name = images.build({"scattered.qcow2": scattered})
    fakes = QemuImgFakes(tmp_path / "bin2")
    result = cdisk("convert", "-q", "-O", "vdi", "--tmpdir", tmp_path, name, small_fs / "out.vdi", env=fakes.env)
    assert_one_line_error(result, 6, "free")
    assert "measure" in fakes.subcommands() and "convert" not in fakes.subcommands()
    assert list(small_fs.iterdir()) == []
    # The same data as a vmdk's 64 KiB grains fits.
    result = cdisk("convert", "-q", "-O", "vmdk", "--tmpdir", tmp_path, name, small_fs / "out.vmdk")
    assert result.code == 0, result.err
    assert same_disk(scattered, "qcow2", small_fs / "out.vmdk", "vmdk")
    (small_fs / "out.vmdk").unlink()

    # parallels: qemu preallocates 128 MiB ahead while it writes (ENOSPC on 3 MiB): refused before it starts.
    result = cdisk("convert", "-q", "-O", "parallels", "--tmpdir", tmp_path, name, small_fs / "out.hds")
    assert_one_line_error(result, 6, "free")
    assert list(small_fs.iterdir()) == []


@pytest.mark.parametrize("command", ["convert", "refresh"])
@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_dev_null_is_no_target(tmp_path: Path, command: str, force: list[str]) -> None:
    # Refused at once, before any pull, without first asking for the --force it would then refuse.
    (tmp_path / "null").symlink_to("/dev/null")
    for target in ("/dev/null", tmp_path / "null"):
        result = cdisk(command, *force, "localhost/cdisk-test-absent:1", target)
        assert_one_line_error(result, 6, f"{target} is a character device, not a disk target; ")
        assert "cdisk verify" in result.err and "--force" not in result.err


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


def test_disk_full_while_writing_leaves_nothing(convert: Convert, images: Images, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = faulty_convert(
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
    env = faulty_convert(bin_dir, "open(target, 'wb').write(b'partial'); time.sleep(120)")
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
    with attached_loop(tmp_path / "zero.img", fill=0) as device:
        result = cdisk("convert", "--force", "--target-is-zero", name, device)
        assert result.code == 0, result.err
        assert same_disk(disk, "qcow2", device, "raw")
    refused = cdisk("convert", "-q", "--force", "--target-is-zero", name, tmp_path / "file.raw")
    assert refused.code == 2 and "--target-is-zero is for an existing block device" in refused.err


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_dangling_symlink_is_not_replaced(images: Images, tmp_path: Path, force: list[str]) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    target = tmp_path / "vm.raw"
    target.symlink_to(tmp_path / "elsewhere" / "vm.raw")
    result = cdisk("convert", "-q", *force, name, target)
    assert_one_line_error(result, 6)
    assert target.is_symlink() and os.readlink(target) == str(tmp_path / "elsewhere" / "vm.raw")
    assert not (tmp_path / "elsewhere").exists()


def test_dangling_symlink_to_an_existing_directory_is_not_written_through(tmp_path: Path) -> None:
    (tmp_path / "vms").mkdir()
    target = tmp_path / "vm.raw"
    target.symlink_to("vms/new.raw")
    result = cdisk("convert", "-q", "--pull", "never", "--force", "localhost/cdisk-test-absent:1", target)
    assert_one_line_error(result, 6)
    assert "does not exist" in result.err and "symlink" in result.err
    assert list((tmp_path / "vms").iterdir()) == [] and target.is_symlink()


@pytest.mark.parametrize("loop", ["self", "pair"])
@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_symlink_loop_at_target(tmp_path: Path, loop: str, force: list[str]) -> None:
    target = tmp_path / "vm.raw"
    if loop == "self":
        target.symlink_to("vm.raw")
    else:
        target.symlink_to("other.raw")
        (tmp_path / "other.raw").symlink_to("vm.raw")
    result = cdisk("convert", "-q", "--pull", "never", *force, "localhost/cdisk-test-absent:1", target)
    assert_one_line_error(result, 6)
    assert "symbolic links" in result.err and target.is_symlink()


def test_force_writes_through_a_symlink_to_a_file(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    (tmp_path / "versions").mkdir()
    real = tmp_path / "versions" / "vm-1.raw"
    real.write_bytes(b"previous")
    link = tmp_path / "current.raw"
    link.symlink_to("versions/vm-1.raw")
    refused = convert("-q", name, link)
    assert refused.code == 6 and "--force" in refused.err and real.read_bytes() == b"previous"
    result = convert("--json", "--force", name, link)
    assert result.code == 0, result.err
    assert link.is_symlink() and os.readlink(link) == "versions/vm-1.raw"
    assert same_disk(disk, "qcow2", real, "raw")
    assert json.loads(result.out)["target"] == str(real)


def test_force_writes_a_block_device_through_its_symlink(
    convert: Convert, images: Images, loop_device: Path, tmp_path: Path
) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "virtio-cdisk-test"  # as /dev/disk/by-id/… names a device
    link.symlink_to(os.path.relpath(loop_device, by_id))
    refused = convert("-q", name, link)
    assert refused.code == 6 and "--force" in refused.err
    result = convert("-q", "--force", name, link)
    assert result.code == 0, result.err
    assert link.is_symlink() and stat.S_ISBLK(os.stat(loop_device).st_mode)
    assert same_disk(disk, "qcow2", loop_device, "raw")


@pytest.mark.parametrize("name_bytes", [254, 255])
@pytest.mark.parametrize("letter", ["x", "é"])
def test_longest_legal_target_names(convert: Convert, images: Images, tmp_path: Path, name_bytes: int,
                                    letter: str) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    width = len(letter.encode())
    stem = letter * ((name_bytes - 4) // width)
    target = tmp_path / (stem + "x" * (name_bytes - 4 - len(stem.encode())) + ".raw")
    assert len(os.fsencode(target.name)) == name_bytes
    result = convert("-q", name, target)
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", target, "raw")
    again = convert("-q", "--force", name, target)  # a replacement makes a temp name beside it too
    assert again.code == 0, again.err


def test_target_name_too_long(tmp_path: Path) -> None:
    result = cdisk("convert", "-q", "--pull", "never", "localhost/cdisk-test-absent:1", tmp_path / ("x" * 256))
    assert_one_line_error(result, 6)
    assert "name too long" in result.err.lower()


@contextmanager
def _tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    mountpoint.mkdir()
    mounted = sh("mount", "-t", "tmpfs", "-o", options, "tmpfs", mountpoint, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        sh("umount", mountpoint)


def test_read_only_target_directory(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    with _tmpfs(tmp_path / "ro", "ro,size=1M") as ro:
        result = convert("-q", "--tmpdir", tmp_path, name, ro / "out.raw")
        assert_one_line_error(result, 6)
        assert "Read-only file system" in result.err


def test_read_only_target_directory_refused_for_replacing(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    with _tmpfs(tmp_path / "ro", "size=1M") as fs:
        (fs / "out.raw").write_bytes(b"previous")
        sh("mount", "-o", "remount,ro", fs)
        result = convert("-q", "--force", "--tmpdir", tmp_path, name, fs / "out.raw")
        assert_one_line_error(result, 6)
        assert "Read-only file system" in result.err and (fs / "out.raw").read_bytes() == b"previous"


def test_no_inodes_left_in_the_target_directory(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    with _tmpfs(tmp_path / "full", "size=16M,nr_inodes=1") as full:  # the root directory takes the one inode
        result = convert("-q", "--tmpdir", tmp_path, name, full / "out.raw")
        assert_one_line_error(result, 6)
        assert "No space left" in result.err and list(full.iterdir()) == []


def test_a_tmpdir_too_small_for_the_save(convert: Convert, method: str, images: Images, tmp_path: Path) -> None:
    disk = images.disk("full.raw", fmt="raw", size="4M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x33 0 4M", disk)
    name = images.build({"full.raw": disk})
    with _tmpfs(tmp_path / "small", "size=1M") as small:
        result = convert("-q", "--tmpdir", small, name, tmp_path / "out.raw")
        if method == "save":  # refused before the engine saves a byte, with the way out
            assert_one_line_error(result, 6)
            assert "pass --tmpdir on a larger filesystem" in result.err
            assert not (tmp_path / "out.raw").exists()
        else:  # read in place: the temp dir is never used
            assert result.code == 0, result.err
            assert same_disk(disk, "raw", tmp_path / "out.raw", "raw")
        assert list(small.iterdir()) == []


def test_immutable_target_directory(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    locked = tmp_path / "locked"
    locked.mkdir()
    if sh("chattr", "+i", locked, check=False).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        result = convert("-q", "--tmpdir", tmp_path, name, locked / "out.raw")
        assert_one_line_error(result, 6)
        assert "Operation not permitted" in result.err and list(locked.iterdir()) == []
    finally:
        sh("chattr", "-i", locked)


def test_unwritable_target_directory(images: Images, tmp_path: Path) -> None:
    # Root passes permission checks unless it lacks CAP_DAC_OVERRIDE: drop it to meet EACCES for real.
    if shutil.which("capsh") is None:
        pytest.skip("capsh is not installed here")
    name = images.build({"disk.qcow2": images.disk()})
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o555)
    argv = [sys.executable, "-m", "cdisk", "convert", "-q", "--method", "save", "--tmpdir", str(tmp_path), name,
            str(closed / "out.raw")]
    proc = subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
                           " ".join(shlex.quote(a) for a in argv)], capture_output=True, text=True)
    assert_one_line_error(Run(proc.returncode, proc.stdout, proc.stderr), 6)
    assert "Permission denied" in proc.stderr and list(closed.iterdir()) == []


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    result = cdisk("convert", "-q", "--pull", "never", "localhost/cdisk-test-absent:1", tmp_path / "file" / "out.raw")
    assert_one_line_error(result, 6)
    assert "not a directory" in result.err.lower()
