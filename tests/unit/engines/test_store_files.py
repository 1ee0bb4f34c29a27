"""Where an overlay store keeps a layer's tar-split, found from the layer directories the engine names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cdisk.core.engines.seam import Image
from cdisk.core.engines.store_files import StoredLayer, chain_ids, stored_layers
from cdisk.core.errors import ImageError

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_chain_ids_as_moby_makes_them() -> None:
    # layer.CreateChainID: the lowest layer's is its diff ID, each one above sha256("<below> <diff ID>").
    assert chain_ids((A, B)) == [A, "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()]
    assert chain_ids(()) == []


def _image(engine: str, store: str, dirs: tuple[str, ...], layers: tuple[str, ...] = (A, B)) -> Image:
    return Image("localhost/x", "id", "", "amd64", 0, layers, store, dirs, engine)


def test_podman_s_tar_split_beside_its_layers() -> None:
    root = "/var/lib/containers/storage"
    image = _image("podman", "overlay", (f"{root}/overlay/top/diff", f"{root}/overlay/low/diff"))
    assert stored_layers(image) == [
        StoredLayer(A, f"{root}/overlay/low/diff", f"{root}/overlay-layers/low.tar-split.gz"),
        StoredLayer(B, f"{root}/overlay/top/diff", f"{root}/overlay-layers/top.tar-split.gz")]


def test_docker_s_tar_split_in_its_layer_db(tmp_path: Path) -> None:
    low_chain, top_chain = (c.removeprefix("sha256:") for c in chain_ids((A, B)))
    db = tmp_path / "image" / "overlay2" / "layerdb" / "sha256"
    for chain, cache in ((low_chain, "c-low"), (top_chain, "c-top")):
        (db / chain).mkdir(parents=True)
        (db / chain / "cache-id").write_text(cache)
    image = _image("docker", "overlay2", (f"{tmp_path}/overlay2/c-top/diff", f"{tmp_path}/overlay2/c-low/diff"))
    assert stored_layers(image) == [
        StoredLayer(A, f"{tmp_path}/overlay2/c-low/diff", f"{db}/{low_chain}/tar-split.json.gz"),
        StoredLayer(B, f"{tmp_path}/overlay2/c-top/diff", f"{db}/{top_chain}/tar-split.json.gz")]
    (db / top_chain / "cache-id").write_text("another")
    with pytest.raises(ImageError, match=r"names another directory .*'another'.*remove the image and pull it again$"):
        stored_layers(image)
    (db / top_chain / "cache-id").unlink()
    with pytest.raises(ImageError, match=r"cannot be read .No such file or directory.; the store is damaged"):
        stored_layers(image)


@pytest.mark.parametrize("image", [
    _image("podman", "vfs", ("/s/vfs/dir/top", "/s/vfs/dir/low")),
    _image("podman", "overlay", ()),
    _image("podman", "overlay", ("/s/overlay/top/diff",)),
    _image("docker", "btrfs", ("/d/btrfs/subvolumes/x", "/d/btrfs/subvolumes/y")),
], ids=["vfs", "no-dirs", "fewer-dirs", "btrfs"])
def test_a_store_cdisk_cannot_check_in_place(image: Image) -> None:
    with pytest.raises(ImageError, match="whose layers cdisk cannot check in place; check an image in an overlay"):
        stored_layers(image)


def test_a_directory_that_is_no_diff() -> None:
    with pytest.raises(ImageError, match="not an overlay layer's diff"):
        stored_layers(_image("podman", "overlay", ("/s/overlay/top/merged", "/s/overlay/low/diff")))
