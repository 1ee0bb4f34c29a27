"""`cdisk verify IMAGE` (no TARGET): the image's own bytes hash to what it says — a store's layers reassembled in
place from their tar-split (podman, docker), a file's blobs — and one byte flipped is one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import Images, assert_one_line_error, cdisk
from tests.images import Entry, docker_archive, layer_tar, one_disk_layout, podvm_layers, sh


@pytest.fixture(params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both stores (the `images` fixture builds in this one's); docker's is the suite's own dockerd."""
    if request.param == "docker":
        request.getfixturevalue("docker_host")
    return str(request.param)


def _top_layer_dir(engine: str, name: str) -> Path:
    """Where the engine keeps the image's top layer's files (its inspection's UpperDir)."""
    return Path(sh(engine, "image", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", name).stdout.strip())


def _flip(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0x01]), offset)
    finally:
        os.close(fd)


@pytest.fixture
def own_image(images: Images, engine: str) -> str:
    """An image of this test's own (its layer is no other test's: a disk of its own pattern, built without a
    cache), whose store files the test may damage; removed after the test."""
    return images.build({"disk.qcow2": images.disk(pattern=0x3C)})


def test_an_intact_image_passes(own_image: str, engine: str) -> None:
    result = cdisk("verify", "--json", own_image)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["intact"], data["engine"], data["checked"]) == (True, engine, "diff IDs")
    [layer] = data["layers"]
    assert layer["found"] == layer["digest"] and layer["intact"] and layer["path"] == str(_top_layer_dir(engine,
                                                                                                         own_image))
    assert data["bytes_read"] == (_top_layer_dir(engine, own_image) / "disk" / "disk.qcow2").stat().st_size
    plain = cdisk("verify", own_image)
    assert plain.code == 0 and plain.out == f"{own_image}: 1 layer(s) hash to their diff IDs " \
                                           f"({data['bytes_read']} bytes of content read)\n", plain.out


def test_one_flipped_byte_of_the_disk_in_the_store_is_named(own_image: str, engine: str) -> None:
    disk = _top_layer_dir(engine, own_image) / "disk" / "disk.qcow2"
    _flip(disk, disk.stat().st_size - 1000)  # in the last cluster written: the pattern
    result = cdisk("verify", own_image)
    assert result.code == 8, result.err
    [line] = result.out.splitlines()
    assert line.startswith("layer sha256:") and line.endswith(
        ": disk/disk.qcow2 differs from what the layer's metadata says (CRC-64); the store is damaged: remove the "
        "image and pull it again"), line
    data = json.loads(cdisk("verify", "--json", own_image).out)
    [layer] = data["layers"]
    assert (data["intact"], layer["intact"], layer["files"]) == (False, False, ["disk/disk.qcow2"])
    assert layer["found"] != layer["digest"]


def test_a_truncated_disk_in_the_store_is_named(own_image: str, engine: str) -> None:
    disk = _top_layer_dir(engine, own_image) / "disk" / "disk.qcow2"
    os.truncate(disk, disk.stat().st_size - 1)
    result = cdisk("verify", own_image)
    assert result.code == 8, result.err
    [line] = result.out.splitlines()
    assert "disk/disk.qcow2: " in line and "bytes where the layer's metadata says" in line, line


def test_method_and_path_need_a_target(own_image: str) -> None:
    assert_one_line_error(cdisk("verify", "--method", "save", own_image), 2, "give a TARGET")


def test_a_file_source_s_blobs_hash_to_their_digests(tmp_path: Path) -> None:
    layout, _, layer = one_disk_layout(tmp_path)
    result = cdisk("verify", "--json", f"oci:{layout}")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["intact"], data["checked"], data["engine"]) == (True, "digests", "file")
    _flip(layer, 700)
    result = cdisk("verify", f"oci:{layout}")
    assert result.code == 8, result.err
    [line] = result.out.splitlines()
    assert line.startswith(f"layer sha256:{layer.name} in {layer}: hashes to sha256:"), line
    assert line.endswith("; the file was changed or damaged: save or pull the image again"), line


def test_a_docker_archive_s_layers_hash_to_their_diff_ids(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path, [layer_tar([Entry("disk/vm.img", data=b"y" * 4096)])], "localhost/x:1")
    result = cdisk("verify", "--json", f"docker-archive:{archive}")
    assert result.code == 0, result.err
    assert json.loads(result.out)["intact"] is True


def test_every_layer_of_a_podvm_image_and_the_damaged_one_named(images: Images, engine: str) -> None:
    # A base of several files, the disk in a layer of its own, a layer above with a whiteout (overlay keeps it as
    # a character device; its tar entry has no content): each layer is checked against its own diff ID.
    name = images.layers(*podvm_layers(os.urandom(3 << 20), above=2))
    result = cdisk("verify", "--json", name)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    diff_ids = json.loads(sh(engine, "image", "inspect", "--format", "{{json .RootFS.Layers}}", name).stdout)
    assert [layer["digest"] for layer in data["layers"]] == diff_ids and len(diff_ids) == 4
    assert all(layer["found"] == layer["digest"] for layer in data["layers"])
    disk_layer = data["layers"][1]
    _flip(Path(disk_layer["path"]) / "image" / "podvm.qcow2", 12345)
    result = cdisk("verify", name)
    assert result.code == 8, result.err
    [line] = result.out.splitlines()
    assert line.startswith(f"layer {disk_layer['digest']}: image/podvm.qcow2 differs"), line


def test_a_layer_s_missing_tar_split_is_an_error(own_image: str, engine: str) -> None:
    [layer] = json.loads(cdisk("verify", "--json", own_image).out)["layers"]
    directory = Path(layer["path"]).parent
    if engine == "podman":
        tar_split = directory.parent.parent / "overlay-layers" / f"{directory.name}.tar-split.gz"
    else:
        db = directory.parent.parent / "image" / "overlay2" / "layerdb" / "sha256" / layer["digest"][7:]
        tar_split = db / "tar-split.json.gz"
    hidden = tar_split.with_name(tar_split.name + ".hidden")
    tar_split.rename(hidden)
    try:
        assert_one_line_error(cdisk("verify", own_image), 3, "No such file or directory); the store is damaged: "
                                                             "remove the image and pull it again")
    finally:
        hidden.rename(tar_split)
