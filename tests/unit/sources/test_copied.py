"""A disk copied out of a compressed layer into an anonymous file: read as `/dev/fd/N` like a file in place, and
given a name (`link_as`) when it already is the raw result asked for — or told why it cannot be.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.sources.copied import CopiedFile

DATA = bytes(range(256)) * 16


def anonymous_copy(directory: Path) -> int:
    """An O_TMPFILE file holding DATA, held read-only as the layer reader holds its copies."""
    written = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.write(written, DATA)
        return os.open(f"/proc/self/fd/{written}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(written)


@pytest.fixture
def copy_fd(tmp_path: Path) -> Iterator[int]:
    fd = anonymous_copy(tmp_path)
    try:
        yield fd
    finally:
        os.close(fd)


def test_it_is_read_like_a_file_in_place(copy_fd: int, tmp_path: Path) -> None:
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, True)
    assert copied.node() == {"driver": "file", "filename": f"/dev/fd/{copy_fd}"}
    assert copied.pass_fds == (copy_fd,)
    assert copied.read_at(4000, 500) == DATA[4000:]
    assert os.listdir(tmp_path) == []  # it has no name


def test_link_as_names_the_very_file_with_the_mode_asked(copy_fd: int, tmp_path: Path) -> None:
    target = tmp_path / "vm.raw"
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, True)
    assert copied.link_as(str(target), 0o640) is None
    st = target.stat()
    assert (st.st_dev, st.st_ino) == (os.fstat(copy_fd).st_dev, os.fstat(copy_fd).st_ino)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_nlink == 1
    assert target.read_bytes() == DATA
    assert os.listdir(tmp_path) == ["vm.raw"]


def test_a_head_only_copy_is_never_named(copy_fd: int, tmp_path: Path) -> None:
    target = tmp_path / "vm.raw"
    for linkable in (True, False):
        copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), False, linkable)
        assert copied.link_as(str(target), 0o644) == "only part of it was copied"
    assert os.listdir(tmp_path) == []


def test_a_copy_made_without_o_tmpfile_is_never_named(copy_fd: int, tmp_path: Path) -> None:
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, False)
    assert copied.link_as(str(tmp_path / "vm.raw"), 0o644) == "the filesystem has no O_TMPFILE"
    assert os.listdir(tmp_path) == []


def test_an_existing_target_is_left_as_it_is(copy_fd: int, tmp_path: Path) -> None:
    target = tmp_path / "vm.raw"
    target.write_bytes(b"keep me")
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, True)
    assert copied.link_as(str(target), 0o644) == "File exists"
    assert target.read_bytes() == b"keep me"


def test_a_target_in_a_missing_directory_says_why(copy_fd: int, tmp_path: Path) -> None:
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, True)
    assert copied.link_as(str(tmp_path / "gone" / "vm.raw"), 0o644) == "No such file or directory"


def test_link_as_leaves_no_descriptor_open(copy_fd: int, tmp_path: Path) -> None:
    copied = CopiedFile("/disk/disk.img", copy_fd, len(DATA), str(tmp_path), True, True)
    before = sorted(os.listdir("/proc/self/fd"))
    assert copied.link_as(str(tmp_path / "vm.raw"), 0o644) is None
    assert copied.link_as(str(tmp_path / "vm.raw"), 0o644) == "File exists"
    assert sorted(os.listdir("/proc/self/fd")) == before
