"""`cdisk verify`: identical, different (with the first differing offset), or an error — on both methods."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.devices import loop_device
from tests.helpers import Images, assert_one_line_error, cdisk, same_disk
from tests.images import sh


@pytest.fixture
def image_and_target(images: Images, tmp_path: Path) -> tuple[str, Path]:
    """An image in the store and the raw target `cdisk convert` wrote from it."""
    name = images.build({"disk.qcow2": images.disk()})
    target = tmp_path / "out.raw"
    assert cdisk("convert", "-q", name, target).code == 0
    return name, target


def test_identical(image_and_target: tuple[str, Path], method: str) -> None:
    name, target = image_and_target
    result = cdisk("verify", "--json", "--method", method, name, target)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["identical"], data["first_difference"], data["method"]) == (True, None, method)


def test_a_changed_byte_is_found_at_its_offset(image_and_target: tuple[str, Path], method: str) -> None:
    name, target = image_and_target
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x00 3145728 512", target)  # where the disk has 0xab
    result = cdisk("verify", "--json", "--method", method, name, target)
    assert result.code == 8
    assert json.loads(result.out)["first_difference"] == 3 << 20


def test_a_longer_target_differs_where_the_disk_ends(image_and_target: tuple[str, Path], method: str) -> None:
    name, target = image_and_target
    os.truncate(target, 9 << 20)
    result = cdisk("verify", "--method", method, name, target)
    assert result.code == 8 and f"from offset {8 << 20}" in result.out


def test_qcow2_target_and_errors(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    target = tmp_path / "out.qcow2"
    assert cdisk("convert", "-q", "-O", "qcow2", name, target).code == 0
    assert cdisk("verify", "-q", name, target).code == 0
    missing = cdisk("verify", "-q", name, tmp_path / "absent.raw")
    assert missing.code == 6 and "does not exist" in missing.err
    evil = tmp_path / "evil.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "8M")
    refused = cdisk("verify", "-q", name, evil)
    assert refused.code == 5 and "backing file" in refused.err


def _recording_podman(bin_dir: Path, log: Path) -> dict[str, str]:
    """The real podman, its argv written to `log` first: a witness of where `podman save` writes."""
    real = sh("which", "podman").stdout.strip()
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {log}\nexec {real} \"$@\"\n")
    (bin_dir / "podman").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _save_destinations(log: Path) -> list[str]:
    lines = [line.split() for line in log.read_text().splitlines() if line.startswith("save ")]
    return [argv[argv.index("-o") + 1] for argv in lines]


@pytest.mark.parametrize("command", ["verify", "convert"])
def test_save_on_a_block_device_uses_the_system_temp_dir(images: Images, tmp_path: Path, command: str) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / "podman.log"
    env = {**_recording_podman(tmp_path / "bin", log), "TMPDIR": str(scratch)}
    with loop_device(tmp_path / "loop.img") as device:
        assert cdisk("convert", "-q", "--force", "--method", "mount", name, device).code == 0
        result = cdisk(command, "-q", "--method", "save", *(["--force"] * (command == "convert")), name, device,
                       env=env)
        assert result.code == 0, result.err
        assert same_disk(disk, "qcow2", device, "raw")
    [destination] = _save_destinations(log)
    assert destination.startswith(f"{scratch}/.cdisk-save-"), destination
    assert list(scratch.iterdir()) == []


def test_verify_saves_beside_a_file_target_and_where_tmpdir_says(image_and_target: tuple[str, Path],
                                                                 tmp_path: Path) -> None:
    name, target = image_and_target
    log = tmp_path / "podman.log"
    env = _recording_podman(tmp_path / "bin", log)
    assert cdisk("verify", "-q", "--method", "save", name, target, env=env).code == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert cdisk("verify", "-q", "--method", "save", "--tmpdir", scratch, name, target, env=env).code == 0
    beside, given = _save_destinations(log)
    assert beside.startswith(f"{target.parent}/.cdisk-save-") and given.startswith(f"{scratch}/.cdisk-save-")


@pytest.mark.parametrize("loop", ["self", "pair"])
def test_a_target_that_is_a_symlink_loop(images: Images, tmp_path: Path, loop: str) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    target = tmp_path / "vm.raw"
    target.symlink_to("vm.raw" if loop == "self" else "other.raw")
    if loop == "pair":
        (tmp_path / "other.raw").symlink_to("vm.raw")
    result = cdisk("verify", "-q", name, target)
    assert_one_line_error(result, 6, "symbolic links")


def test_a_target_whose_name_is_too_long(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("verify", "-q", name, tmp_path / ("x" * 256))
    assert_one_line_error(result, 6)
    assert "name too long" in result.err.lower(), result.err


def test_verify_through_a_symlink(image_and_target: tuple[str, Path], tmp_path: Path) -> None:
    name, target = image_and_target
    link = tmp_path / "current.raw"
    link.symlink_to(target.name)
    result = cdisk("verify", "--json", name, link)
    assert result.code == 0, result.err
    assert json.loads(result.out)["identical"] is True


def test_a_missing_target_is_found_before_any_pull(tmp_path: Path) -> None:
    # Nothing listens on port 9: a verify that pulled first would fail on the pull (exit 3), not on TARGET.
    result = cdisk("verify", "-q", "--pull", "always", "127.0.0.1:9/cdisk/absent:1", tmp_path / "absent.raw")
    assert result.code == 6, result.err
    assert "absent.raw does not exist; convert the image first" in result.err
