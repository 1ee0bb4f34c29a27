"""build's compressed layer written on every core: the same layer on one core and on all, read by Go's gzip and
zstd readers (podman's load checks it against the diff ID) and by gzip(1), and converted back to the disk."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import cdisk, same_disk
from tests.images import remove_image, sh

pytestmark = pytest.mark.needs("podman", "qemu-img", "bwrap")


def _disk(path: Path) -> Path:
    """A raw disk of data (random, so that compressing it takes a while) between holes, over many blocks."""
    rng = random.Random(3)
    with open(path, "wb") as f:
        for offset in (1 << 20, 5 << 20, (13 << 20) + 512):
            f.seek(offset)
            f.write(rng.randbytes(3 << 20))
        f.truncate(24 << 20)
    return path


@contextmanager
def _one_core() -> Iterator[None]:
    """What cdisk starts meanwhile may run on one core only (as under `taskset -c 0`)."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def _layer(archive: Path, digest: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert member is not None
        return member.read()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_one_core_and_all_build_the_same_layer(tmp_path: Path, compression: str) -> None:
    disk = _disk(tmp_path / "in.raw")
    runs = {}
    for cores, archive in (("one", tmp_path / "one.tar"), ("all", tmp_path / "all.tar")):
        args = ("build", "--json", "--layer-compression", compression, "--output", f"oci-archive:{archive}", disk,
                "localhost/parallel:1")
        if cores == "one":
            with _one_core():
                run = cdisk(*args)
        else:
            run = cdisk(*args)
        assert run.code == 0, run.err
        runs[cores] = json.loads(run.out)
    assert runs["one"]["layer_digest"] == runs["all"]["layer_digest"]
    assert runs["one"]["image_id"] == runs["all"]["image_id"]
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "all.tar").read_bytes()
    blob = tmp_path / "layer"
    blob.write_bytes(_layer(tmp_path / "all.tar", str(runs["all"]["layer_digest"])))
    tester = ["gzip", "-t", blob] if compression == "gzip" else ["zstd", "-q", "-t", blob]
    if subprocess.run(["which", tester[0]], capture_output=True).returncode == 0:
        assert sh(*tester, check=False).returncode == 0


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_podman_loads_it_and_it_converts_back(tmp_path: Path, compression: str) -> None:
    """Loaded through an archive whose layer podman decompresses with Go's reader and checks against the diff ID
    (and gzip's CRC and size, zstd's checksum)."""
    disk = _disk(tmp_path / "in.raw")
    archive, name = tmp_path / "image.tar", f"localhost/cdisk-parallel-{uuid.uuid4().hex[:12]}:1"
    built = cdisk("build", "-q", "--layer-compression", compression, "--output", f"docker-archive:{archive}",
                  disk, name)
    assert built.code == 0, built.err
    try:
        loaded = sh("podman", "load", "-q", "-i", archive, check=False)
        assert loaded.returncode == 0, loaded.stderr
        out = tmp_path / "out.raw"
        converted = cdisk("convert", "-q", "--engine", "podman", name, out)
        assert converted.code == 0, converted.err
        assert same_disk(disk, "raw", out, "raw")
    finally:
        remove_image(name)
