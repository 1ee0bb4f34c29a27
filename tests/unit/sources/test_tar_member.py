"""A disk read inside a tar: the bytes of one member at its offset, never extracted — as a raw slice for
qemu-img, read through the blob's descriptor when cdisk holds one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cdisk.core.qemu.qemu_img import image_spec
from cdisk.core.sources.tar_member import TarMember

MEMBER = bytes(range(256)) * 3 + b"tail"  # 772 bytes: not a whole number of sectors
BEFORE, AFTER = b"B" * 1536, b"A" * 1024


def blob_file(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar"
    path.write_bytes(BEFORE + MEMBER + bytes(-len(MEMBER) % 512) + AFTER)
    return path


def test_the_node_is_a_raw_slice_rounded_up_to_whole_sectors() -> None:
    member = TarMember("/disk/disk.img", "/dev/fd/7", 1536, 772, (7,))
    assert member.node() == {"driver": "raw", "offset": 1536, "size": 1024,
                             "file": {"driver": "file", "filename": "/dev/fd/7"}}
    assert member.pass_fds == (7,)
    assert TarMember("/disk/d", "/saved/layer.tar", 512, 1024).node()["size"] == 1024
    assert TarMember("/disk/d", "/saved/layer.tar", 512, 1024).pass_fds == ()


@pytest.mark.parametrize(
    ("offset", "length", "start", "end"),
    [
        (0, 16, 0, 16),
        (700, 1000, 700, 772),  # never the padding, nor the next member
        (772, 10, 0, 0),
        (4000, 10, 0, 0),
    ],
)
def test_read_at_reads_the_member_alone_by_its_path(tmp_path: Path, offset: int, length: int, start: int,
                                                    end: int) -> None:
    member = TarMember("/disk/disk.img", str(blob_file(tmp_path)), len(BEFORE), len(MEMBER))
    assert member.read_at(offset, length) == MEMBER[start:end]


def test_read_at_reads_through_the_descriptor_never_the_path(tmp_path: Path) -> None:
    path = blob_file(tmp_path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        member = TarMember("/disk/disk.img", str(path), len(BEFORE), len(MEMBER), (fd,))
        other = tmp_path / "other.tar"
        other.write_bytes(b"\xff" * 4096)
        os.replace(other, path)  # the path now names another file; the descriptor still the one cdisk opened
        assert member.read_at(0, 4) == MEMBER[:4]
        assert member.read_at(770, 100) == b"il"
    finally:
        os.close(fd)


def test_read_at_by_path_leaves_no_descriptor_open(tmp_path: Path) -> None:
    member = TarMember("/disk/disk.img", str(blob_file(tmp_path)), len(BEFORE), len(MEMBER))
    before = sorted(os.listdir("/proc/self/fd"))
    member.read_at(0, 10)
    assert sorted(os.listdir("/proc/self/fd")) == before


@pytest.mark.needs("qemu-img")
def test_qemu_img_reads_exactly_the_member_padded_to_its_sector(tmp_path: Path) -> None:
    path = blob_file(tmp_path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        member = TarMember("/disk/disk.img", f"/dev/fd/{fd}", len(BEFORE), len(MEMBER), (fd,))
        out = tmp_path / "out.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", image_spec("raw", member.node()), str(out)],
                       pass_fds=member.pass_fds, check=True)
    finally:
        os.close(fd)
    assert out.read_bytes() == MEMBER + bytes(1024 - len(MEMBER))
