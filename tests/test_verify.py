"""`cdisk verify`: identical, different (with the first differing offset), or an error — on both methods."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import Images, cdisk
from tests.images import sh


@pytest.fixture
def converted(images: Images, tmp_path: Path) -> tuple[str, Path]:
    name = images.build({"disk.qcow2": images.disk()})
    target = tmp_path / "out.raw"
    assert cdisk("convert", "-q", name, target).code == 0
    return name, target


def test_identical(converted: tuple[str, Path], method: str) -> None:
    name, target = converted
    result = cdisk("verify", "--json", "--method", method, name, target)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["identical"], data["first_difference"], data["method"]) == (True, None, method)


def test_a_changed_byte_is_found_at_its_offset(converted: tuple[str, Path], method: str) -> None:
    name, target = converted
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x00 3145728 512", target)  # where the disk has 0xab
    result = cdisk("verify", "--json", "--method", method, name, target)
    assert result.code == 8
    assert json.loads(result.out)["first_difference"] == 3 << 20


def test_a_longer_target_differs_where_the_disk_ends(converted: tuple[str, Path], method: str) -> None:
    name, target = converted
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
