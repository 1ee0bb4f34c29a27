"""What `docker save` writes, read in place: layers as byte ranges of the archive, the disk at the layer's
offset plus its own. Archives written here as docker writes them (up to 24, and from 25 on with an OCI
layout inside); no docker needed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from cdisk.core.disk.wanted import Wanted
from cdisk.core.errors import ImageError
from cdisk.core.layers.saved import SavedLayers, read_layer
from cdisk.core.oci.blob import close_blobs
from cdisk.core.oci.docker_archive import layer_blobs
from cdisk.core.progress import NoProgress
from tests.images import Entry, layer_tar, tar_file

DISK = b"QFI\xfb" + bytes(range(256)) * 40


def _archive(path: Path, members: dict[str, bytes | str], manifest: object) -> Path:
    """A tar of these members (a str is a symlink's target), manifest.json last, as docker writes it."""
    return tar_file(path, [*members.items(), ("manifest.json", json.dumps(manifest).encode())])


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_the_disk_is_read_at_the_layers_offset_plus_its_own(tmp_path: Path) -> None:
    lower = layer_tar([Entry("disk/", directory=True), Entry("disk/old.img", data=b"x" * 700)])
    upper = layer_tar([Entry("disk/.wh.old.img", data=b""), Entry("disk/vm.qcow2", data=DISK)])
    archive = _archive(tmp_path / "a.tar", {"aa/layer.tar": lower, "bb/layer.tar": upper, "c0ffee.json": b"{}"},
                       [{"Config": "c0ffee.json", "Layers": ["aa/layer.tar", "bb/layer.tar"]}])
    blobs = layer_blobs(archive, "c0ffee", (_digest(lower), _digest(upper)))
    assert [b.digest for b in blobs] == [_digest(lower), _digest(upper)]
    tree = SavedLayers(blobs, Wanted.disk(None), str(tmp_path), NoProgress()).tree
    assert tree.lookup("disk/old.img") is None  # the whiteout of the upper layer, inside the archive
    member = tree.lookup("disk/vm.qcow2")
    assert member is not None and member.size == len(DISK)
    with archive.open("rb") as f:
        f.seek(blobs[member.layer].offset + member.offset)
        assert f.read(member.size) == DISK


def test_a_layer_saved_twice_is_a_symlink_to_the_first(tmp_path: Path) -> None:
    layer = layer_tar([Entry("disk/vm.qcow2", data=DISK)])
    archive = _archive(tmp_path / "a.tar", {"aa/layer.tar": layer, "bb/layer.tar": "../aa/layer.tar",
                                            "c0ffee.json": b"{}"},
                       [{"Config": "c0ffee.json", "Layers": ["aa/layer.tar", "bb/layer.tar"]}])
    first, second = layer_blobs(archive, "c0ffee", (_digest(layer), _digest(layer)))
    assert (first.offset, first.size) == (second.offset, second.size) == (first.offset, len(layer))


def test_docker_25_layout_inside_the_archive(tmp_path: Path) -> None:
    layer = layer_tar([Entry("disk/vm.qcow2", data=DISK)])
    hex_layer, hex_config = _digest(layer)[7:], "ab" * 32
    archive = _archive(tmp_path / "a.tar", {f"blobs/sha256/{hex_config}": b"{}", f"blobs/sha256/{hex_layer}": layer,
                                            "index.json": b"{}", "oci-layout": b"{}"},
                       [{"Config": f"blobs/sha256/{hex_config}", "Layers": [f"blobs/sha256/{hex_layer}"]}])
    [blob] = layer_blobs(archive, hex_config, (_digest(layer),))
    assert [m.path for m in read_layer(blob, 0) if m.kind == "file"] == ["disk/vm.qcow2"]


def test_one_image_whose_id_is_not_its_configs_digest(tmp_path: Path) -> None:
    # docker's containerd image store: the ID is the manifest's digest. A long layer name makes the archive
    # carry a PAX header before the layer, so its data does not start one block after its header.
    layer = layer_tar([Entry("disk/vm.qcow2", data=DISK)])
    name = "x" * 150 + "/layer.tar"
    archive = _archive(tmp_path / "a.tar", {"blobs/sha256/" + "cd" * 32: b"{}", name: layer},
                       [{"Config": "blobs/sha256/" + "cd" * 32, "Layers": [name]}])
    [blob] = layer_blobs(archive, "ef" * 32, (_digest(layer),))
    with archive.open("rb") as f:
        f.seek(blob.offset)
        assert f.read(blob.size) == layer
    [member] = [m for m in read_layer(blob, 0) if m.kind == "file"]
    with archive.open("rb") as f:
        f.seek(blob.offset + member.offset)
        assert f.read(member.size) == DISK


def test_a_compressed_layer_inside_the_archive_is_decompressed(tmp_path: Path) -> None:
    # docker's containerd image store saves layers as pulled: compressed.
    layer = gzip.compress(layer_tar([Entry("disk/vm.qcow2", data=DISK)]))
    archive = _archive(tmp_path / "a.tar", {"aa/layer.tar": layer, "c0ffee.json": b"{}"},
                       [{"Config": "c0ffee.json", "Layers": ["aa/layer.tar"]}])
    blobs = layer_blobs(archive, "c0ffee", ("sha256:" + "1" * 64,))
    layers = SavedLayers(blobs, Wanted.disk(None), str(tmp_path), NoProgress())
    try:
        member = layers.tree.lookup("disk/vm.qcow2")
        assert member is not None and layers.kinds == ["gzip"]
        assert layers.source("/disk/vm.qcow2", member).read_at(0, len(DISK) + 1) == DISK
    finally:
        layers.close()
        close_blobs(blobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]


@pytest.mark.parametrize(("members", "manifest", "says"), [
    ({"c0ffee.json": b"{}"}, [{"Config": "other.json", "Layers": []}, {"Config": "more.json", "Layers": []}],
     "no manifest for image"),
    ({"c0ffee.json": b"{}"}, [{"Config": "c0ffee.json", "Layers": ["x/layer.tar"]}], "no file 'x/layer.tar'"),
    ({"c0ffee.json": b"{}", "x/layer.tar": "../y/layer.tar", "y/layer.tar": "../x/layer.tar"},
     [{"Config": "c0ffee.json", "Layers": ["x/layer.tar"]}], "no file"),
    ({"c0ffee.json": b"{}", "x/layer.tar": b""}, [{"Config": "c0ffee.json", "Layers": ["x/layer.tar"] * 2}],
     "lists 2 layers where the image has 1"),
], ids=["other-image", "missing-layer", "symlink-loop", "layer-count"])
def test_an_archive_that_does_not_hold_the_image(tmp_path: Path, members: dict[str, bytes | str],
                                                 manifest: object, says: str) -> None:
    archive = _archive(tmp_path / "a.tar", members, manifest)
    with pytest.raises(ImageError) as refused:
        layer_blobs(archive, "c0ffee", ("sha256:" + "1" * 64,))
    assert says in refused.value.message
