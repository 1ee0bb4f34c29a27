"""build's uncompressed layer shares the disk's blocks where the file system clones: a real XFS (reflink=1) loop
file system made here, the disk and the output on it; shared extents checked with filefrag, the image converted
back and compared with qemu-img compare. On another file system (the test's own, ext4 here) it is written."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cdisk, same_disk
from tests.images import sh

pytestmark = pytest.mark.needs("qemu-img", "qemu-io", "bwrap")


@pytest.fixture
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A loop-mounted XFS with reflink, removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    if subprocess.run(["which", "mkfs.xfs"], capture_output=True).returncode != 0:
        pytest.skip("mkfs.xfs is not installed (xfsprogs; scripts/setup installs it with CDISK_SETUP_TEST=1)")
    work = tmp_path_factory.mktemp("fs-xfs")
    image, mountpoint = work / "fs.img", work / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    sh("mkfs.xfs", "-q", "-m", "reflink=1", image)
    mounted = sh("mount", "-o", "loop", image, mountpoint, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop xfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        sh("umount", "-l", mountpoint, check=False)


def _shared_bytes(path: Path) -> int:
    """How much of `path` shares its blocks with another file (filefrag's "shared" flag, in 4 KiB blocks)."""
    lines = [line for line in sh("filefrag", "-v", "-b4096", path).stdout.splitlines() if "shared" in line]
    return sum(int(line.split(":")[3]) for line in lines) * 4096


def _disk(path: Path) -> Path:
    """16 MiB of data, a 16 MiB hole, then 1536 bytes: the end inside a block."""
    sh("qemu-img", "create", "-q", "-f", "raw", path, str((32 << 20) + 1536))
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 16M", "-c", "write -P 0xa5 32M 1536", path)
    return path


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
def test_the_layer_clones_the_disk_on_xfs(xfs: Path, transport: str) -> None:
    disk = _disk(xfs / "in.raw")
    path = xfs / transport
    built = cdisk("build", "--json", "--layer-compression", "none", "--output", f"{transport}:{path}", disk,
                  "localhost/clone:1")
    assert built.code == 0, built.err
    result = json.loads(built.out)
    held = _blob(path, str(result["layer_digest"])) if transport == "oci" else path
    # The disk's 16 MiB of data are the disk's own blocks in the layer (hard-linked into the layout, or cloned
    # again into the archive): nothing else on this file system holds those bytes.
    assert _shared_bytes(held) >= 16 << 20, sh("filefrag", "-v", held).stdout
    assert held.stat().st_blocks * 512 < 20 << 20, "the hole stays a hole"
    out = xfs / "out.raw"
    converted = cdisk("convert", "-q", f"{transport}:{path}", out)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "raw", out, "raw")
    # The same layer as one written byte by byte elsewhere: the clone changes where its bytes come from, not them.
    other = cdisk("build", "--json", "--layer-compression", "none", "--output", f"oci:{xfs.parent / 'ext'}", disk,
                  "localhost/clone:1")
    assert other.code == 0, other.err
    assert json.loads(other.out)["layer_digest"] == result["layer_digest"]
    assert _shared_bytes(_blob(xfs.parent / "ext", str(result["layer_digest"]))) == 0

