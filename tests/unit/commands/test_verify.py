"""The formats of a target cdisk wrote that an image's disk may not be (qed, parallels), told by their headers; a file
source's blobs hashed by `verify IMAGE`."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from cdisk.core.commands.verify import _verify_blobs, _written_format
from cdisk.core.engines.seam import Image
from cdisk.core.errors import UnsafeImageError
from cdisk.core.oci.blob import LayerBlob, close_blobs
from cdisk.core.progress import NoProgress
from tests.images import sh


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize(("fmt", "told"), [("qed", "qed"), ("parallels", "parallels"), ("qcow2", None),
                                           ("raw", None), ("vmdk", None)])
def test_a_target_s_format_by_its_header(tmp_path: Path, fmt: str, told: str | None) -> None:
    sh("qemu-img", "create", "-q", "-f", fmt, tmp_path / "t", "8M")
    assert _written_format((tmp_path / "t").read_bytes()[:64]) == told


@pytest.mark.needs("qemu-img")
def test_a_qed_target_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    sh("qemu-img", "create", "-q", "-f", "raw", tmp_path / "base", "8M")
    sh("qemu-img", "create", "-q", "-f", "qed", "-b", tmp_path / "base", "-F", "raw", tmp_path / "t")
    with pytest.raises(UnsafeImageError, match="QED with a backing file"):
        _written_format((tmp_path / "t").read_bytes()[:64])


def _blob(path: Path, data: bytes, digest_of: bytes, tar_digest: bool = False) -> LayerBlob:
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return LayerBlob(Path(f"/dev/fd/{fd}"), 0, len(data), "sha256:" + hashlib.sha256(digest_of).hexdigest(), fd,
                     outside=True, tar_digest=tar_digest)


@pytest.mark.parametrize("tar_digest", [False, True], ids=["blob-digest", "gzip-layer-by-its-tar"])
def test_a_file_source_s_blobs_each_hash_to_their_digest(tmp_path: Path, tar_digest: bool) -> None:
    tar = os.urandom(3 << 20)
    stored = gzip.compress(tar) if tar_digest else tar
    good = _blob(tmp_path / "good", stored, tar if tar_digest else stored, tar_digest)
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 1
    bad = _blob(tmp_path / "bad", bytes(damaged), tar if tar_digest else stored, tar_digest)
    image = Image("oci:x", "id", "", "amd64", 0, (good.digest, bad.digest), engine="file")
    try:
        verdict = _verify_blobs("oci:x", image, [good, bad], NoProgress())
    finally:
        close_blobs([good, bad])
    assert (verdict.intact, verdict.checked) == (False, "digests")
    assert len(stored) < verdict.bytes_read <= 2 * len(stored)  # a damaged gzip stream ends where zlib finds it
    first, second = verdict.layers
    assert (first.intact, first.found, first.path, first.reason) == (True, good.digest, str(tmp_path / "good"), "")
    assert (second.intact, second.path) == (False, str(tmp_path / "bad"))
    assert second.reason in (f"hashes to {second.found}", "its compressed bytes are damaged")


def test_a_blob_shorter_than_the_image_says(tmp_path: Path) -> None:
    blob = _blob(tmp_path / "short", b"abc", b"abcd")
    blob = LayerBlob(blob.path, 0, 4, blob.digest, blob.fd, outside=True)
    try:
        [layer] = _verify_blobs("oci:x", Image("oci:x", "id", "", "amd64", 0, (), engine="file"), [blob],
                                NoProgress()).layers
    finally:
        close_blobs([blob])
    assert (layer.intact, layer.reason) == (False, "3 bytes where the image says 4")


def test_a_gzip_layer_cut_short(tmp_path: Path) -> None:
    tar = os.urandom(1 << 16)
    blob = _blob(tmp_path / "cut", gzip.compress(tar)[:-20], tar, tar_digest=True)
    try:
        [layer] = _verify_blobs("docker-archive:x", Image("docker-archive:x", "id", "", "amd64", 0, (), engine="file"),
                                [blob], NoProgress()).layers
    finally:
        close_blobs([blob])
    assert (layer.intact, layer.reason) == (False, "its compressed bytes end before their stream does")
