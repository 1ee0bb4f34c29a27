"""A layer blob: what its first bytes say, its head read through its descriptor or its path, and its
descriptors, which are never a standard stream and are closed together (pure, real files).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.errors import ImageError
from cdisk.core.oci.blob import LayerBlob, all_or_none, close_blobs, compression_of, own_fd, read_head
from tests.helpers import is_open
from tests.images import layer_tar

DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def held(path: Path, offset: int = 0, size: int | None = None) -> LayerBlob:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return LayerBlob(Path(f"/dev/fd/{fd}"), offset, os.path.getsize(path) - offset if size is None else size,
                     DIGEST, fd=fd)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08\x00rest", "gzip"),
        (b"\x28\xb5\x2f\xfdrest", "zstd"),
        (b"BZh91AY&SY", "bzip2"),
        (b"\xfd7zXZ\x00\x00rest", "xz"),
        (b"\x1f\x8b\x08", "gzip"),
    ],
    ids=["gzip", "zstd", "bzip2", "xz", "gzip-magic-alone"],
)
def test_compression_of_each_magic(head: bytes, kind: str) -> None:
    assert compression_of(head) == kind


@pytest.mark.parametrize(
    "head",
    [
        b"\x1f\x8b\x09\x00",  # gzip's magic with another method than deflate: Go takes it as no gzip
        b"\x1f\x8b",  # cut inside the magic
        b"\x28\xb5\x2f",
        b"\xfd7zXZ",
        b"",
        bytes(512),  # a raw disk's first sector
        b"QFI\xfb\x00\x00\x00\x03",  # a qcow2 disk
    ],
    ids=["gzip-not-deflate", "gzip-cut", "zstd-cut", "xz-cut", "empty", "zero-sector", "qcow2"],
)
def test_compression_of_anything_else_is_none(head: bytes) -> None:
    assert compression_of(head) is None


def test_compression_of_a_plain_tar_is_none() -> None:
    assert compression_of(layer_tar([])[:512]) is None


def test_short_is_the_digests_first_12_hex_digits() -> None:
    assert LayerBlob(Path("/x"), 0, 0, DIGEST).short == "0123456789ab"
    assert LayerBlob(Path("/x"), 0, 0, "abcdef0123456789").short == "abcdef012345"


def test_read_head_through_the_descriptor_at_the_blobs_offset(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"A" * 100 + bytes(range(256)) * 4 + b"B" * 100)
    blob = held(path, 100, 1024)
    try:
        assert read_head(blob) == bytes(range(256)) * 2
        path.unlink()  # read through the descriptor, never the path
        assert read_head(blob) == bytes(range(256)) * 2
    finally:
        close_blobs([blob])


def test_read_head_of_a_short_blob_stops_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"A" * 10 + b"0123456789" + b"B" * 1000)
    blob = held(path, 10, 10)
    try:
        assert read_head(blob) == b"0123456789"
    finally:
        close_blobs([blob])


def test_read_head_through_the_path_when_no_descriptor_is_held(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(b"A" * 7 + b"C" * 600)
    assert read_head(LayerBlob(path, 7, 600, DIGEST)) == b"C" * 512
    assert read_head(LayerBlob(path, 7, 5, DIGEST)) == b"C" * 5


def test_an_unreadable_blob_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as missing:
        read_head(LayerBlob(tmp_path / "gone", 0, 512, DIGEST))
    assert missing.value.message == ("cannot read layer 0123456789ab of the saved image: No such file or directory; "
                                     "re-pull the image")
    assert missing.value.exit_code == 3
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ImageError, match=r"^cannot read layer 0123456789ab of the saved image: Is a directory;"):
            read_head(LayerBlob(Path(f"/dev/fd/{directory}"), 0, 512, DIGEST, fd=directory))
    finally:
        os.close(directory)


def test_close_blobs_closes_every_descriptor_and_skips_blobs_without_one(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x" * 10)
    blobs = [held(path), LayerBlob(path, 0, 10, DIGEST), held(path)]
    close_blobs(blobs)
    assert [is_open(blob.fd) for blob in blobs if blob.fd is not None] == [False, False]


def test_all_or_none_returns_every_blob_opened(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x" * 10)
    blobs = all_or_none(held(path) for _ in range(3))
    try:
        assert len(blobs) == 3 and all(blob.fd is not None and is_open(blob.fd) for blob in blobs)
    finally:
        close_blobs(blobs)


def test_all_or_none_closes_those_opened_when_one_fails(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x" * 10)
    opened: list[LayerBlob] = []

    def opening() -> Iterator[LayerBlob]:
        for _ in range(2):
            opened.append(held(path))
            yield opened[-1]
        yield LayerBlob(path, 0, 10, DIGEST)
        raise ImageError("the third layer is missing")

    with pytest.raises(ImageError, match=r"^the third layer is missing$"):
        all_or_none(opening())
    assert len(opened) == 2 and [is_open(blob.fd) for blob in opened if blob.fd is not None] == [False, False]


def test_all_or_none_closes_those_opened_on_an_interrupt_too(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x")
    first = held(path)

    def opening() -> Iterator[LayerBlob]:
        yield first
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        all_or_none(opening())
    assert first.fd is not None and not is_open(first.fd)


def test_own_fd_is_a_close_on_exec_copy_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        copy = own_fd(fd)
        try:
            assert copy >= 3 and copy != fd
            assert fcntl.fcntl(copy, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert (os.fstat(copy).st_dev, os.fstat(copy).st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)
        finally:
            os.close(copy)
        assert is_open(fd)
    finally:
        os.close(fd)


def test_own_fd_is_never_a_standard_stream_even_when_one_is_free(tmp_path: Path) -> None:
    # In a child whose stdin and stdout are closed: a plain dup would hand out descriptor 0.
    path = tmp_path / "layer"
    path.write_bytes(b"x")
    script = (
        "import os, sys\n"
        "from cdisk.core.oci.blob import own_fd\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        "report = os.dup(2)\n"
        "os.close(0); os.close(1)\n"
        "os.write(report, b'%d' % own_fd(fd))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert int(done.stderr) >= 3
