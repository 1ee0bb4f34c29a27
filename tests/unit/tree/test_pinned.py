"""A disk opened from a tree on this host is the very regular file that was resolved, or it is closed and
refused (pure, real files).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdisk.core.errors import UnsafeImageError
from cdisk.core.tree.pinned import changed, same_file
from tests.helpers import is_open

REFUSAL = "/disk/disk.img changed while cdisk looked at it; run cdisk again"


def refused_and_closed(fd: int, expected: os.stat_result | None) -> None:
    with pytest.raises(UnsafeImageError) as refused:
        same_file(fd, expected, "disk/disk.img")
    assert refused.value.message == REFUSAL and refused.value.exit_code == 5
    assert not is_open(fd)


def test_the_resolved_file_is_accepted_and_stays_open(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    fd = os.open(disk, os.O_RDONLY)
    try:
        assert same_file(fd, os.stat(disk), "disk/disk.img") == fd
        assert is_open(fd) and os.pread(fd, 4, 0) == b"disk"
    finally:
        os.close(fd)


def test_a_hard_link_to_the_resolved_file_is_that_file(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    os.link(disk, tmp_path / "other-name")
    fd = os.open(tmp_path / "other-name", os.O_RDONLY)
    try:
        assert same_file(fd, os.stat(disk), "disk/disk.img") == fd
    finally:
        os.close(fd)


def test_another_file_put_at_the_path_is_refused_and_closed(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    resolved = os.stat(disk)
    swapped = tmp_path / "swapped"
    swapped.write_bytes(b"evil")
    os.replace(swapped, disk)  # what the tree holds now: another inode at the same path
    refused_and_closed(os.open(disk, os.O_RDONLY), resolved)


def test_the_same_inode_number_on_another_device_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    st = os.stat(disk)
    fields = list(st)
    fields[2] = st.st_dev + 1  # st_dev
    elsewhere = os.stat_result(fields)
    assert (elsewhere.st_dev, elsewhere.st_ino) == (st.st_dev + 1, st.st_ino)
    refused_and_closed(os.open(disk, os.O_RDONLY), elsewhere)


def test_a_directory_is_refused_and_closed_even_as_resolved(tmp_path: Path) -> None:
    directory = tmp_path / "disk.img"
    directory.mkdir()
    refused_and_closed(os.open(directory, os.O_RDONLY | os.O_DIRECTORY), os.stat(directory))


def test_a_fifo_is_refused_and_closed_even_as_resolved(tmp_path: Path) -> None:
    fifo = tmp_path / "disk.img"
    os.mkfifo(fifo)
    refused_and_closed(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), os.stat(fifo))


def test_nothing_resolved_is_refused_and_closed(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    refused_and_closed(os.open(disk, os.O_RDONLY), None)


def test_changed_names_the_image_path() -> None:
    assert changed("data/vm.qcow2").message == "/data/vm.qcow2 changed while cdisk looked at it; run cdisk again"
