"""Blobs from outside hashed beside the work: compared with their digests, each byte range read once, a file
changed while it was read refused, a digest cdisk cannot check refused before a byte is read."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.errors import ImageError
from cdisk.core.layers.digests import BlobChecks
from cdisk.core.oci.blob import LayerBlob

DATA = os.urandom(3 << 20)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _blob(fd: int, data: bytes = DATA, offset: int = 0, size: int | None = None) -> LayerBlob:
    size = len(data) if size is None else size
    digest = "sha256:" + hashlib.sha256(data[offset:offset + size]).hexdigest()
    return LayerBlob(Path(f"/dev/fd/{fd}"), offset, size, digest, fd=fd, outside=True)


def test_blobs_that_hash_to_their_digests_pass_each_range_read_once(held: int) -> None:
    whole, part = _blob(held), _blob(held, offset=4096, size=8192)
    checks = BlobChecks([whole, part, whole])  # a manifest may name one blob several times
    checks.verify()
    assert len(checks._ranges) == 2


def test_a_blob_that_does_not_hash_to_its_digest_is_named_with_both(held: int) -> None:
    wrong = LayerBlob(Path("/dev/fd/x"), 0, len(DATA), "sha256:" + "0" * 64, fd=held, outside=True)
    with pytest.raises(ImageError, match=f"layer 000000000000 does not hash to its digest \\(sha256:{'0' * 64} "
                                         f"expected, sha256:{hashlib.sha256(DATA).hexdigest()} found\\)"):
        BlobChecks([wrong]).verify()


def test_a_blob_written_while_it_was_read_is_refused(held: int) -> None:
    checks = BlobChecks([_blob(held)])
    time.sleep(0.05)  # past the file system's clock tick: the write's mtime differs
    os.pwrite(held, DATA[:1], 0)  # the same byte: the content still hashes right, but the file was written
    with pytest.raises(ImageError, match="changed while cdisk read it"):
        checks.verify()


@pytest.mark.parametrize("digest", ["sha512:" + "a" * 128, "sha256:" + "A" * 64, "sha256:\x1b]0;" + "a" * 60])
def test_a_digest_cdisk_cannot_check_is_refused_before_a_byte_is_read(held: int, digest: str) -> None:
    with pytest.raises(ImageError, match="not a sha256 digest cdisk can check"):
        BlobChecks([LayerBlob(Path("/dev/fd/x"), 0, 1, digest, fd=held, outside=True)])


def test_stop_ends_the_thread(held: int) -> None:
    checks = BlobChecks([_blob(held)])
    checks.stop()
    assert not checks._thread.is_alive()
