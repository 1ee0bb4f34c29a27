"""A disk read in place: the very file, through the descriptor cdisk opened, for qemu-img (`/dev/fd/N`) and
for the header checks (`read_at`, bounded by the disk's size).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.qemu.qemu_img import image_spec
from cdisk.core.sources import read_span
from cdisk.core.sources.in_place import InPlaceFile

DATA = bytes(range(256)) * 8  # 2048 bytes, each offset telling where it is


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[InPlaceFile]:
    path = tmp_path / "disk.img"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield InPlaceFile("/disk/disk.img", fd, len(DATA))
    finally:
        os.close(fd)


def test_the_node_names_the_descriptor_cdisk_holds(disk: InPlaceFile) -> None:
    assert disk.node() == {"driver": "file", "filename": f"/dev/fd/{disk.fd}"}
    assert disk.pass_fds == (disk.fd,)
    assert (disk.image_path, disk.size) == ("/disk/disk.img", 2048)


@pytest.mark.parametrize(
    ("offset", "length", "start", "end"),
    [
        (0, 16, 0, 16),
        (300, 100, 300, 400),
        (2000, 100, 2000, 2048),  # cut at the disk's end
        (0, 1 << 20, 0, 2048),
        (2048, 10, 0, 0),  # at the end
        (5000, 10, 0, 0),  # past it
        (10, 0, 0, 0),
    ],
)
def test_read_at_never_reads_past_the_end(disk: InPlaceFile, offset: int, length: int, start: int, end: int) -> None:
    assert disk.read_at(offset, length) == DATA[start:end]


def test_read_at_is_bounded_by_the_size_given_not_the_files(disk: InPlaceFile) -> None:
    shorter = InPlaceFile(disk.image_path, disk.fd, 1000)
    assert shorter.read_at(900, 500) == DATA[900:1000]
    assert shorter.read_at(1000, 10) == b""


def test_read_at_reads_the_file_opened_not_what_is_at_its_path_now(disk: InPlaceFile, tmp_path: Path) -> None:
    (tmp_path / "disk.img").unlink()
    (tmp_path / "disk.img").write_bytes(b"\xff" * 2048)
    assert disk.read_at(0, 4) == DATA[:4]


def test_read_span_reads_within_a_window_of_the_file(disk: InPlaceFile) -> None:
    assert read_span(disk.fd, 1024, 512, 0, 8) == DATA[1024:1032]
    assert read_span(disk.fd, 1024, 512, 500, 100) == DATA[1524:1536]
    assert read_span(disk.fd, 1024, 512, 512, 100) == b""


@pytest.mark.needs("qemu-img")
def test_qemu_img_reads_the_disk_through_the_inherited_descriptor(disk: InPlaceFile, tmp_path: Path) -> None:
    os.rename(tmp_path / "disk.img", tmp_path / "moved.img")  # the path it had means nothing to the node
    spec = image_spec("raw", disk.node())
    info = subprocess.run(["qemu-img", "info", "--output=json", spec], pass_fds=disk.pass_fds, capture_output=True,
                          text=True, check=True)
    assert json.loads(info.stdout)["virtual-size"] == 2048
    out = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", spec, str(out)], pass_fds=disk.pass_fds, check=True)
    assert out.read_bytes() == DATA
