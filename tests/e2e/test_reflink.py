"""Raw (and same-format) targets cloned from the store's file where the file system shares blocks: real XFS
(reflink=1) and btrfs loop file systems made here, each with a private podman store on it; ext4 beside them,
where qemu-img converts as ever. Shared extents are checked with filefrag, content with qemu-img compare."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cdisk, same_disk
from tests.images import make_disk, sh
from tests.stores import storage_conf

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "bwrap")

MKFS = {"xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q"], "ext4": ["mkfs.ext4", "-q"]}


class Store:
    """A loop-mounted file system with a podman store of its own on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        conf = storage_conf(root / "storage.conf", root)
        self.env = {"CONTAINERS_STORAGE_CONF": str(conf)}

    def podman(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, **self.env}, check=True)

    def build(self, disk: Path, name: str) -> None:
        context = Path(tempfile.mkdtemp(dir=self.root))
        os.link(disk, context / disk.name)
        (context / "Containerfile").write_text(f"FROM scratch\nCOPY {disk.name} /disk/\n")
        self.podman("build", "-q", "-t", name, context)

    def convert(self, *args: str | Path) -> dict[str, object]:
        run = cdisk("convert", "--json", *args, env=self.env)
        assert run.code == 0, run.err
        return json.loads(run.out)  # type: ignore[no-any-return]


@pytest.fixture(params=sorted(MKFS))
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store]]:
    kind = request.param
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    if subprocess.run(["which", MKFS[kind][0]], capture_output=True).returncode != 0:
        pytest.skip(f"{MKFS[kind][0]} is not installed (scripts/setup installs it with CDISK_SETUP_TEST=1)")
    work = tmp_path_factory.mktemp(f"fs-{kind}")
    image, mountpoint = work / "fs.img", work / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    sh(*MKFS[kind], image)
    mounted = sh("mount", "-o", "loop", image, mountpoint, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop {kind} here: {mounted.stderr.strip()}")
    made = Store(mountpoint)
    try:
        yield kind, made
    finally:
        subprocess.run(["podman", "system", "reset", "-f"], capture_output=True, env={**os.environ, **made.env})
        sh("umount", "-l", mountpoint, check=False)


def _shared(path: Path) -> bool:
    """Whether every extent of `path` is shared with another file (filefrag's "shared" flag)."""
    extents = [line for line in sh("filefrag", "-v", path).stdout.splitlines() if ".." in line and ":" in line]
    return bool(extents) and all("shared" in line for line in extents)


def _shared_bytes(path: Path) -> int:
    """How much of `path` shares its blocks with another file (filefrag counts in 4 KiB blocks with -b4096)."""
    lines = [line for line in sh("filefrag", "-v", "-b4096", path).stdout.splitlines() if "shared" in line]
    return sum(int(line.split(":")[3]) for line in lines) * 4096


def test_a_raw_disk_is_cloned_where_the_file_system_can(store: tuple[str, Store]) -> None:
    kind, made = store
    disk = make_disk(made.root / "in.raw", "raw", "64M")
    made.build(disk, "localhost/reflink:raw")
    target = made.root / "vm.raw"
    done = made.convert("--method", "layers", "localhost/reflink:raw", target)
    assert same_disk(disk, "raw", target, "raw")
    if kind == "ext4":
        assert done["copy"] == "qemu-img"
        return
    assert done["copy"] == "reflink"
    assert _shared(target), sh("filefrag", "-v", target).stdout
    forced = made.convert("--method", "layers", "--no-reflink", "-f", "localhost/reflink:raw", target)
    assert forced["copy"] == "qemu-img" and same_disk(disk, "raw", target, "raw")
    saved = made.convert("--method", "save", "-f", "localhost/reflink:raw", target)
    assert saved["copy"] == "qemu-img", "a slice of a saved layer is converted"


def test_a_qcow2_to_qcow2_is_cloned_and_other_formats_convert(store: tuple[str, Store]) -> None:
    kind, made = store
    disk = make_disk(made.root / "in.qcow2", "qcow2", "64M")
    made.build(disk, "localhost/reflink:qcow2")
    same = made.convert("--method", "layers", "-O", "qcow2", "localhost/reflink:qcow2", made.root / "vm.qcow2")
    assert same["copy"] == ("qemu-img" if kind == "ext4" else "reflink")
    assert same_disk(disk, "qcow2", made.root / "vm.qcow2", "qcow2")
    other = made.convert("--method", "layers", "localhost/reflink:qcow2", made.root / "vm.raw")
    assert other["copy"] == "qemu-img" and same_disk(disk, "qcow2", made.root / "vm.raw", "raw")


def test_a_target_on_another_file_system_is_converted(store: tuple[str, Store], tmp_path: Path) -> None:
    _, made = store
    disk = make_disk(made.root / "in.raw", "raw", "16M")
    made.build(disk, "localhost/reflink:other")
    done = made.convert("--method", "layers", "localhost/reflink:other", tmp_path / "vm.raw")
    assert done["copy"] == "qemu-img" and same_disk(disk, "raw", tmp_path / "vm.raw", "raw")


@pytest.mark.needs("skopeo")
def test_a_member_of_a_layer_cdisk_built_is_cloned(store: tuple[str, Store]) -> None:
    """`cdisk build` puts the disk's data on a 4 KiB block of its layer (and the layer's on one in an archive):
    a raw target clones them out of the tar, the last partial block copied; podman keeps the layer's bytes, so
    its own save of the image clones too."""
    kind, made = store
    disk = made.root / "in.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", disk, str((16 << 20) + 1536))  # ends inside a block
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 16M", "-c", "write -P 0xa5 16M 1536", disk)
    built = cdisk("build", "-q", "--layer-compression", "none", disk, "localhost/reflink:built", env=made.env)
    assert built.code == 0, built.err
    target = made.root / "vm.raw"
    for transport in ("oci", "oci-archive", "docker-archive"):
        path = made.root / transport
        built = cdisk("build", "-q", "--layer-compression", "none", "--output", f"{transport}:{path}", disk,
                      "localhost/reflink:built", env=made.env)
        assert built.code == 0, built.err
        done = made.convert("-f", f"{transport}:{path}", target)
        assert done["copy"] == ("qemu-img" if kind == "ext4" else "reflink"), transport
        assert same_disk(disk, "raw", target, "raw") and target.stat().st_size == disk.stat().st_size
        if kind != "ext4":
            assert _shared_bytes(target) >= 16 << 20, sh("filefrag", "-v", target).stdout
    saved = made.convert("--method", "save", "-f", "localhost/reflink:built", target)
    assert saved["copy"] == ("qemu-img" if kind == "ext4" else "reflink")
    assert same_disk(disk, "raw", target, "raw")
    qcow2, layout = make_disk(made.root / "in.qcow2", "qcow2", "16M"), made.root / "qcow2"
    built = cdisk("build", "-q", "--layer-compression", "none", "--output", f"oci:{layout}", qcow2,
                  "localhost/reflink:qcow2", env=made.env)
    assert built.code == 0, built.err
    same = made.convert("-O", "qcow2", f"oci:{layout}", made.root / "vm.qcow2")
    assert same["copy"] == ("qemu-img" if kind == "ext4" else "reflink")
    assert same_disk(qcow2, "qcow2", made.root / "vm.qcow2", "qcow2")
    compressed = made.root / "gzip"
    built = cdisk("build", "-q", "--output", f"oci:{compressed}", disk, "localhost/reflink:built", env=made.env)
    assert built.code == 0 and made.convert("-f", f"oci:{compressed}", target)["copy"] == "link"
    assert same_disk(disk, "raw", target, "raw")
