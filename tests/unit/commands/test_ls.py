"""A disk's virtual size read from its header, where qemu-img is not run on it: what qemu-img says, or unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdisk.core.commands.ls import header_virtual_size
from cdisk.core.disk.formats import detect_format
from cdisk.core.sources.tar_member import TarMember
from tests.images import sh


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize(("fmt", "options"), [("qcow2", ()), ("raw", ()), ("vmdk", ()), ("vdi", ()),
                                              ("vmdk", ("-o", "subformat=streamOptimized"))])
def test_header_virtual_size_is_what_qemu_img_says(tmp_path: Path, fmt: str, options: tuple[str, ...]) -> None:
    disk = tmp_path / f"d.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, *options, disk, "3M")
    if fmt == "raw":
        disk.write_bytes(disk.read_bytes()[:-100])  # a size qemu-img has to round
    source = TarMember(f"/disk/{disk.name}", str(disk), 0, disk.stat().st_size)
    expected = json.loads(sh("qemu-img", "info", "--output=json", "-f", fmt, disk).stdout)["virtual-size"]
    assert header_virtual_size(detect_format(source.read_at), source) == expected


@pytest.mark.needs("qemu-img")
def test_header_virtual_size_unknown_where_the_header_does_not_say(tmp_path: Path) -> None:
    for fmt in ("vhdx", "vpc"):
        disk = tmp_path / f"d.{fmt}"
        sh("qemu-img", "create", "-q", "-f", fmt, disk, "3M")
        source = TarMember(f"/disk/{disk.name}", str(disk), 0, disk.stat().st_size)
        assert header_virtual_size(detect_format(source.read_at), source) is None
