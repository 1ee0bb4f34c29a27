"""Layers an engine saved, opened: a plain layer read in place as byte ranges of its blob, a disk artifact's
layer that is the disk itself, a compressed layer's files copied out once (and a file not guessed read in a
second pass), stacked into the image's tree; every copy closed with the layers. Layer blobs written here, read
from real files.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cdisk.core.disk.wanted import COPIES, Wanted
from cdisk.core.errors import ImageError, UnsafeImageError
from cdisk.core.layers.saved import SavedLayers, read_layer
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.sources.copied import CopiedFile
from cdisk.core.sources.tar_member import TarMember
from cdisk.core.tree.merged import DIR, FILE, LayerMember
from tests.helpers import Stages
from tests.images import TAR_END, Entry, layer_tar, tar_member

DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ADVICE = "rebuild the image with podman build, buildah or docker, or pull it again"
NOISE = random.Random(5).randbytes(1 << 20)
DISK = NOISE[:10_000]


def open_fds() -> set[str]:
    """This process's open descriptors (not the one that listed them, closed by then)."""
    listed = os.listdir("/proc/self/fd")
    return {fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")}


def data_offsets(tar: bytes) -> dict[str, int]:
    """Where each regular member's data starts, as Python's tarfile reads the tar (a second opinion)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {member.name: member.offset_data for member in archive.getmembers() if member.isfile()}


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


class Saved:
    """Layer blobs written into files with other bytes around them (as members of an archive), held by a
    descriptor or named by path; and the layers opened from them, copies in `directory`."""

    def __init__(self, workdir: Path, directory: Path) -> None:
        self.workdir, self.directory = workdir, directory
        self.fds: list[int] = []
        self.opened: list[SavedLayers] = []
        self.progress = Stages()

    def blob(self, data: bytes, held: bool = True, disk_name: str | None = None, digest: str = DIGEST,
             after: bytes = b"junk after the layer") -> LayerBlob:
        path = self.workdir / f"blob-{len(list(self.workdir.glob('blob-*')))}"
        before = b"H" * 512
        path.write_bytes(before + data + after)
        if not held:
            return LayerBlob(path, len(before), len(data), digest, disk_name=disk_name)
        self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return LayerBlob(Path(f"/dev/fd/{self.fds[-1]}"), len(before), len(data), digest, fd=self.fds[-1],
                         disk_name=disk_name)

    def open(self, blobs: Sequence[LayerBlob], wanted: Wanted | None = None) -> SavedLayers:
        self.opened.append(SavedLayers(blobs, wanted or Wanted.disk(None, every=True), str(self.directory),
                                       self.progress))
        return self.opened[-1]


@pytest.fixture
def saved(tmp_path: Path) -> Iterator[Saved]:
    """After the test the layers opened are closed: then no descriptor but the blobs' is left, nothing named."""
    directory = tmp_path / "copies"
    directory.mkdir()
    before = open_fds()
    made = Saved(tmp_path, directory)
    try:
        yield made
        for layers in made.opened:
            layers.close()
        assert open_fds() == before | {str(fd) for fd in made.fds}
        assert os.listdir(directory) == []
    finally:
        for fd in made.fds:
            os.close(fd)


def found(layers: SavedLayers, path: str) -> LayerMember:
    member = layers.tree.lookup(path)
    assert member is not None, path
    return member


# --- a plain layer, read in place --------------------------------------------------------------------------------

@pytest.mark.parametrize("held", [True, False], ids=["by-descriptor", "by-path"])
def test_a_plain_layer_is_read_in_place_as_byte_ranges(saved: Saved, held: bool) -> None:
    tar = layer_tar([Entry("disk/", directory=True), Entry("disk/disk.img", data=DISK),
                     Entry("etc/hostname", data=b"vm\n")])
    blob = saved.blob(tar, held)
    layers = saved.open([blob])
    assert layers.kinds == [None] and layers.decompressed == {}
    disk = found(layers, "disk/disk.img")
    assert disk == LayerMember("disk/disk.img", FILE, 0, data_offsets(tar)["disk/disk.img"], len(DISK))
    source = layers.source("/disk/disk.img", disk)
    assert source == TarMember("/disk/disk.img", str(blob.path), 512 + disk.offset, len(DISK),
                               () if blob.fd is None else (blob.fd,))
    assert source.read_at(0, 1 << 20) == DISK
    assert layers.copied(disk) and not layers.partial(disk)
    assert saved.progress.stages == []


def test_layers_are_stacked_as_overlay_stacks_them(saved: Saved) -> None:
    lower = layer_tar([Entry("disk/a.img", data=DISK[:1000]), Entry("disk/b.img", data=DISK[:2000])])
    upper = layer_tar([Entry("disk/.wh.a.img", data=b""), Entry("disk/b.img", data=DISK[:3000])])
    blobs = [saved.blob(lower), upper_blob := saved.blob(upper)]
    assert upper_blob.fd is not None
    layers = saved.open(blobs)
    assert layers.tree.children("disk") == ["b.img"]
    b = found(layers, "disk/b.img")
    assert (b.layer, b.size) == (1, 3000)
    source = layers.source("/disk/b.img", b)
    assert source == TarMember("/disk/b.img", str(upper_blob.path), 512 + data_offsets(upper)["disk/b.img"], 3000,
                               (upper_blob.fd,))
    assert source.read_at(0, 5000) == DISK[:3000]


def test_read_layer_of_an_empty_blob_is_an_empty_layer(saved: Saved) -> None:
    assert read_layer(saved.blob(b""), 0) == []


def test_read_layer_reads_no_further_than_the_layer(saved: Saved) -> None:
    # A layer that ends at a block boundary without its end blocks; right after it in the file, another member.
    tar = tar_member("disk/disk.img", DISK)
    blob = saved.blob(tar, after=tar_member("disk/evil.img", b"evil") + TAR_END)
    assert [m.path for m in read_layer(blob, 3)] == ["disk", "disk/disk.img"]
    assert read_layer(blob, 3)[1] == LayerMember("disk/disk.img", FILE, 3, 512, len(DISK))


def test_read_layer_leaves_the_blobs_descriptor_open(saved: Saved) -> None:
    blob = saved.blob(layer_tar([Entry("disk/disk.img", data=DISK)]))
    read_layer(blob, 0)
    assert blob.fd is not None and os.pread(blob.fd, 1, 0) == b"H"


def test_a_refused_plain_layer_is_an_unsafe_image(saved: Saved) -> None:
    with pytest.raises(UnsafeImageError) as refused:
        saved.open([saved.blob(tar_member("disk/disk.img", DISK) + tar_member("../escape", b"x") + TAR_END)])
    assert refused.value.message == ("layer 0123456789ab is refused: a name that climbs out of the image "
                                     f"('../escape') at byte {512 + len(padded(DISK))}; {ADVICE}")
    assert refused.value.exit_code == 5


def test_a_plain_layer_cut_short_is_refused(saved: Saved) -> None:
    with pytest.raises(UnsafeImageError, match=r"^layer 0123456789ab is refused: the layer ends inside "):
        read_layer(saved.blob(tar_member("disk/disk.img", DISK)[:5000]), 0)


def test_an_unreadable_layer_is_an_image_error(saved: Saved, tmp_path: Path) -> None:
    gone = LayerBlob(tmp_path / "gone.tar", 0, 2048, DIGEST)
    for opening in (lambda: read_layer(gone, 0), lambda: saved.open([gone])):
        with pytest.raises(ImageError) as unreadable:
            opening()
        assert unreadable.value.message == ("cannot read layer 0123456789ab of the saved image: No such file or "
                                            "directory; re-pull the image")
        assert unreadable.value.exit_code == 3


# --- a disk artifact's layer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("disk", [DISK, bytes(512) + DISK], ids=["data-first", "zero-sector-first"])
def test_a_disk_artifacts_layer_is_the_disk_itself(saved: Saved, disk: bytes) -> None:
    blob = saved.blob(disk, disk_name="vm.qcow2")
    assert blob.fd is not None
    layers = saved.open([blob])
    assert layers.tree.lookup("disk") == LayerMember("disk", DIR, 0)
    member = found(layers, "disk/vm.qcow2")
    assert member == LayerMember("disk/vm.qcow2", FILE, 0, 0, len(disk))
    source = layers.source("/disk/vm.qcow2", member)
    assert source == TarMember("/disk/vm.qcow2", str(blob.path), 512, len(disk), (blob.fd,))
    assert source.read_at(0, 1 << 20) == disk


def test_a_disk_artifacts_layer_that_is_a_tar_is_read_as_one(saved: Saved) -> None:
    tar = layer_tar([Entry("disk/inside.img", data=DISK)])
    layers = saved.open([saved.blob(tar, disk_name="vm.qcow2")])
    assert layers.tree.lookup("disk/vm.qcow2") is None
    assert found(layers, "disk/inside.img").offset == data_offsets(tar)["disk/inside.img"]


# --- a compressed layer, copied once -----------------------------------------------------------------------------

def test_a_compressed_layers_disk_is_its_copy(saved: Saved) -> None:
    compressed = gzip.compress(layer_tar([Entry("disk/disk.img", data=DISK)]), mtime=0)
    layers = saved.open([saved.blob(compressed)])
    assert layers.kinds == ["gzip"]
    assert saved.progress.stages == ["decompressing layer 0123456789ab (gzip, 0 MiB)"]
    disk = found(layers, "disk/disk.img")
    copy = layers.decompressed[0].copies[disk.offset]
    source = layers.source("/disk/disk.img", disk)
    assert source == CopiedFile("/disk/disk.img", copy.fd, len(DISK), str(saved.directory), True, True)
    assert source.read_at(0, 1 << 20) == DISK
    assert layers.copied(disk) and not layers.partial(disk)


def test_a_file_not_guessed_is_read_in_a_second_pass(saved: Saved) -> None:
    # The disk is a hard link from /disk/ to a file elsewhere: the one pass copied nothing of it.
    tar = layer_tar([Entry("data/real.img", data=DISK), Entry("data/other.img", data=NOISE[:5000]),
                     Entry("disk/", directory=True), Entry("disk/disk.img", hardlink="data/real.img")])
    layers = saved.open([saved.blob(gzip.compress(tar, mtime=0))])
    disk = found(layers, "disk/disk.img")
    assert disk.offset == data_offsets(tar)["data/real.img"]
    assert not layers.copied(disk)
    source = layers.source("/disk/disk.img", disk)
    assert isinstance(source, CopiedFile) and source.read_at(0, 1 << 20) == DISK
    assert layers.copied(disk) and list(layers.decompressed[0].copies) == [disk.offset]
    assert saved.progress.stages == ["decompressing layer 0123456789ab (gzip, 0 MiB)"] * 2


def test_partial_when_only_heads_are_wanted(saved: Saved) -> None:
    tar = layer_tar([Entry("disk/disk.img", data=DISK), Entry("disk/small.img", data=DISK[:700]),
                     Entry("data/big.img", data=DISK[:3000]), Entry("data/tiny.img", data=DISK[:100])])
    plain = saved.blob(layer_tar([Entry("disk/plain.img", data=DISK)]))
    heads = Wanted(lambda path: path.startswith("disk/"), limit=1000)
    layers = saved.open([plain, saved.blob(gzip.compress(tar, mtime=0), digest="sha256:" + "f" * 64)], heads)
    partial = {path: layers.partial(found(layers, path))
               for path in ("disk/disk.img", "disk/small.img", "data/big.img", "data/tiny.img", "disk/plain.img")}
    assert partial == {"disk/disk.img": True, "disk/small.img": False, "data/big.img": True, "data/tiny.img": False,
                       "disk/plain.img": False}
    head = layers.source("/disk/disk.img", found(layers, "disk/disk.img"))
    assert isinstance(head, CopiedFile) and not head.complete and head.read_at(0, 1 << 20) == padded(DISK[:1000])
    again = layers.source("/data/big.img", found(layers, "data/big.img"))  # a second pass keeps a head as well
    assert isinstance(again, CopiedFile) and not again.complete and again.read_at(0, 1 << 20) == padded(DISK[:1000])


def test_copies_of_files_a_later_layer_replaces_or_whites_out_are_closed(saved: Saved) -> None:
    lower = layer_tar([Entry("disk/a.img", data=DISK[:1000]), Entry("disk/b.img", data=DISK[:2000]),
                       Entry("disk/c.img", data=DISK[:3000])])
    upper = layer_tar([Entry("disk/.wh.a.img", data=b""), Entry("disk/b.img", data=DISK[:4000])])
    before = open_fds()
    layers = saved.open([saved.blob(gzip.compress(lower, mtime=0)), saved.blob(gzip.compress(upper, mtime=0))])
    assert list(layers.decompressed[0].copies) == [data_offsets(lower)["disk/c.img"]]
    assert list(layers.decompressed[1].copies) == [data_offsets(upper)["disk/b.img"]]
    assert len(open_fds() - before) == 4  # the two blobs and the two copies left


def test_copies_are_bounded_across_the_layers(saved: Saved) -> None:
    lower = layer_tar([Entry(f"disk/{n}.img", data=DISK[:600 + n]) for n in range(COPIES)])
    upper = layer_tar([Entry("disk/last.img", data=DISK)])
    layers = saved.open([saved.blob(gzip.compress(lower, mtime=0)), saved.blob(gzip.compress(upper, mtime=0))])
    assert len(layers.decompressed[0].copies) == COPIES and layers.decompressed[1].copies == {}
    last = found(layers, "disk/last.img")
    assert not layers.copied(last)
    assert layers.source("/disk/last.img", last).read_at(0, 1 << 20) == DISK  # a second pass for it


def test_close_closes_every_copy(saved: Saved) -> None:
    tar = layer_tar([Entry("disk/a.img", data=DISK), Entry("disk/b.img", data=DISK[:100])])
    before = open_fds()
    layers = saved.open([saved.blob(gzip.compress(tar, mtime=0))])
    assert len(open_fds() - before) == 3
    layers.close()
    assert layers.decompressed == {} and len(open_fds() - before) == 1


def test_a_layer_refused_after_copies_were_made_leaves_none(saved: Saved) -> None:
    good = gzip.compress(layer_tar([Entry("disk/disk.img", data=DISK)]), mtime=0)
    bad = tar_member("../escape", b"x") + TAR_END
    blobs = [saved.blob(good), saved.blob(bad, digest="sha256:" + "e" * 64)]
    with pytest.raises(UnsafeImageError, match=r"^layer eeeeeeeeeeee is refused: a name that climbs out"):
        saved.open(blobs)


def test_convert_copies_one_candidate_and_a_later_layers_replacement_without_a_second_pass(saved: Saved) -> None:
    lower = layer_tar([Entry("disk/a.img", data=DISK[:1000]), Entry("disk/b.img", data=DISK[:2000])])
    upper = layer_tar([Entry("disk/a.img", data=DISK[:3000])])
    layers = saved.open([saved.blob(gzip.compress(lower, mtime=0)), saved.blob(gzip.compress(upper, mtime=0))],
                        Wanted.disk(None))
    # The first candidate only (b.img is counted, not copied); the upper a.img replaces the lower one's copy.
    assert layers.decompressed[0].copies == {}
    assert list(layers.decompressed[1].copies) == [data_offsets(upper)["disk/a.img"]]
    assert layers.copied(found(layers, "disk/a.img")) and not layers.copied(found(layers, "disk/b.img"))
