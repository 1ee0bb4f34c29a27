"""Cloning a disk that is a tar member into the target, the ioctl stood in for (pure)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from cdisk.core import clone
from cdisk.core.clone import FICLONERANGE
from cdisk.core.commands import convert as convert_module
from cdisk.core.sources.tar_member import TarMember


def test_a_member_clone_places_its_last_partial_block_and_refuses_a_cut_tar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FICLONERANGE stood in for by a copy of the range (this machine's file systems may not clone; the real
    clones are in test_reflink): the last partial block follows the cloned ones, and a tar cut after it was read
    is no clone — the target is left empty for qemu-img, which then says what is wrong."""
    def clone_range(fd: int, request: int, arg: bytes) -> None:
        assert request == FICLONERANGE
        src, offset, length, dest = struct.unpack("=qQQQ", arg)
        os.pwrite(fd, os.pread(src, length, offset), dest)

    monkeypatch.setattr(clone.fcntl, "ioctl", clone_range)
    block = os.statvfs(tmp_path).f_bsize
    data = os.urandom(3 * block + 100)
    (tmp_path / "layer.tar").write_bytes(bytes(block) + data + bytes(1024))  # the member's data on a block
    fd = os.open(tmp_path / "layer.tar", os.O_RDONLY)
    out = os.open(tmp_path / "out.raw", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    member = TarMember("/disk/disk.img", f"/dev/fd/{fd}", block, len(data), (fd,))
    try:
        assert convert_module._clone(member, out)
        assert os.pread(out, len(data) + 1, 0) == data
        os.ftruncate(out, 0)
        os.truncate(f"/proc/self/fd/{fd}", member.offset + len(data) - 8)
        with pytest.raises(OSError, match="ended early"):
            convert_module._clone(member, out)
    finally:
        os.close(fd)
        os.close(out)
