"""The pipeline over the engine seam: a second engine, written here over a plain directory (its "mount") and an
OCI layout (its "save"), serves every reading method without a line of the commands changing — and without
podman or docker: the shape both engines plug into.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest

from cdisk.core.engines.seam import Image
from cdisk.core.errors import DiskNotFoundError, LayerDirsUnusable, UserNamespaceUnavailable
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.oci.layout import layer_blobs
from cdisk.core.progress import NoProgress
from cdisk.core.qemu import qemu_img
from cdisk.core.reading.pipeline import opened_disk
from cdisk.core.request import ImageRequest, Method, Reading, ReadRequest
from cdisk.core.sources.in_place import InPlaceFile
from cdisk.core.sources.tar_member import TarMember
from tests.images import Entry, layer_tar, make_disk, oci_layout

# The image is a real disk (qemu-img, qemu-io), read by qemu-img in its sandbox.
pytestmark = pytest.mark.needs("qemu-img", "qemu-io", "bwrap")


class DirectoryEngine:
    """An `Engine` whose store is one image: a directory tree when mounted, an OCI layout when saved."""

    name = "directory"
    mounts = True
    copies = True
    stores = True
    cannot_mount = ""

    def __init__(self, root: Path, layout: Path, image: Image) -> None:
        self.root, self.layout, self.image = root, layout, image
        self.calls: list[str] = []

    def available(self) -> bool:
        return True

    def lookup(self, reference: str, progress: Any) -> Image | None:
        return self.image if reference == self.image.reference else None

    def find_image(self, request: ImageRequest, progress: Any) -> Image:
        self.calls.append(f"find {request.reference}")
        return self.image

    @contextmanager
    def mount(self, image: Image) -> Iterator[str]:
        self.calls.append("mount")
        try:
            yield str(self.root)
        finally:
            self.calls.append("unmount")

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        assert workdir is not None
        self.calls.append("save")
        shutil.copytree(self.layout, workdir / "layout")
        return layer_blobs(workdir / "layout", image.id)

    @contextmanager
    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int) -> Iterator[Any]:
        raise UserNamespaceUnavailable("directory engines have no user namespace", argv, None, "")
        yield

    def load(self, archive: Path) -> None:
        self.calls.append(f"load {archive.name}")

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        self.calls.append(f"push {source} {ref}")


@pytest.fixture
def engine(tmp_path: Path) -> DirectoryEngine:
    disk = make_disk(tmp_path / "disk.qcow2")
    root = tmp_path / "root"
    (root / "disk").mkdir(parents=True)
    shutil.copy(disk, root / "disk" / "disk.qcow2")
    layout, image_id = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.qcow2", disk.read_bytes())])])
    return DirectoryEngine(root, layout, Image("dir:test", image_id, "", "amd64", disk.stat().st_size, ()))


@pytest.mark.parametrize(("reading", "kind"), [(Reading.MOUNT, InPlaceFile), (Reading.SAVE, TarMember)])
def test_any_engine_serves_the_pipeline(engine: DirectoryEngine, tmp_path: Path, reading: Reading,
                                        kind: type) -> None:
    read = ReadRequest(Method.AUTO, tmpdir=str(tmp_path))
    with opened_disk(ImageRequest("dir:test"), read, None, NoProgress(), reading, engine) as disk:
        assert isinstance(disk.source, kind)
        assert (disk.format, disk.virtual_size, disk.source.image_path) == ("qcow2", 8 << 20, "/disk/disk.qcow2")
        original = qemu_img.image_spec("qcow2", qemu_img.file_node(str(engine.root / "disk" / "disk.qcow2")))
        assert qemu_img.compare(disk.spec, original, disk.source.pass_fds) is None
    expected = ["mount", "unmount"] if reading is Reading.MOUNT else ["save"]
    assert engine.calls == ["find dir:test", *expected]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".cdisk-")] == []  # the saved layers are gone


def test_the_pipeline_undoes_what_it_did_when_the_disk_is_missing(engine: DirectoryEngine, tmp_path: Path) -> None:
    read = ReadRequest(Method.MOUNT, disk_path="/disk/absent", tmpdir=str(tmp_path))
    with pytest.raises(DiskNotFoundError), \
            opened_disk(ImageRequest("dir:test"), read, None, NoProgress(), Reading.MOUNT, engine):
        pass
    assert engine.calls == ["find dir:test", "mount", "unmount"]


def test_auto_falls_back_from_layer_directories_it_cannot_vouch_for(engine: DirectoryEngine, tmp_path: Path) -> None:
    # An AUFS-style whiteout among the layer's files: the layer reading hands the image to the next method.
    layer = tmp_path / "layer"
    (layer / "disk").mkdir(parents=True)
    shutil.copy(engine.root / "disk" / "disk.qcow2", layer / "disk" / "disk.qcow2")
    (layer / "disk" / ".wh.old.qcow2").touch()
    image = replace(engine.image, store="overlay", layer_dirs=(str(layer),))
    stages: list[str] = []
    progress = NoProgress()
    progress.stage = stages.append  # type: ignore[method-assign]
    read = ReadRequest(Method.AUTO, tmpdir=str(tmp_path))
    with opened_disk(image, read, None, progress, engine=engine) as disk:
        assert disk.reading is (Reading.MOUNT if os.geteuid() == 0 else Reading.SAVE)
        assert disk.format == "qcow2"
    assert any("AUFS-style whiteout: reading by the" in stage for stage in stages)
    # Asked for explicitly, it is an error.
    with pytest.raises(LayerDirsUnusable), opened_disk(image, ReadRequest(Method.LAYERS), None, NoProgress(),
                                                       engine=engine):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="a trusted.* xattr needs root to write")
def test_writing_falls_back_the_same_way(engine: DirectoryEngine, tmp_path: Path) -> None:
    from cdisk.core.commands.convert import write_disk
    from cdisk.core.request import WriteRequest
    from cdisk.core.target import plan_target

    layer = tmp_path / "layer"
    (layer / "disk").mkdir(parents=True)
    shutil.copy(engine.root / "disk" / "disk.qcow2", layer / "disk" / "disk.qcow2")
    os.setxattr(layer / "disk" / "disk.qcow2", "trusted.overlay.metacopy", b"")  # its data would lie below
    image = replace(engine.image, store="overlay", layer_dirs=(str(layer),))
    write = WriteRequest(str(tmp_path / "out.raw"))
    written = write_disk(image, ReadRequest(Method.AUTO, tmpdir=str(tmp_path)), write,
                         plan_target(write.target, False, "raw"), NoProgress(), engine)
    assert written.reading is Reading.MOUNT
    original = qemu_img.image_spec("qcow2", qemu_img.file_node(str(engine.root / "disk" / "disk.qcow2")))
    assert qemu_img.compare(original, qemu_img.image_spec("raw", qemu_img.file_node(write.target))) is None
