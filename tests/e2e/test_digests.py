"""A file source's layer blobs vouched for by their digests: a changed byte, a blob swapped for a hard link to
another file, a recompressed layer — refused with one line and exit 3, nothing published (no TARGET, a refresh's
previous disk and record untouched, no export served, no verdict)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cdisk
from tests.images import Entry, docker_archive, layer_tar, make_disk, oci_artifact_layout, oci_layout

pytestmark = pytest.mark.needs("qemu-img", "bwrap")


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _layers(layout: Path) -> list[dict[str, object]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
    return list(manifest["layers"])


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _refused(result: object, layer: str) -> None:
    code, err = result.code, result.err  # type: ignore[attr-defined]
    assert code == 3, err
    assert err.count("\n") == 1 and f"layer {layer.removeprefix('sha256:')[:12]} does not hash to its digest" in err
    assert layer in err  # the digest expected, and the one found


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return make_disk(tmp_path / "disk.raw", "raw", "4M", 0x5A)


def test_a_changed_byte_in_a_layouts_disk_layer_is_refused(tmp_path: Path, raw: Path) -> None:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", raw.read_bytes())])])
    [layer] = _layers(layout)
    _flip(_blob(layout, str(layer["digest"])), 1024 + 4096)  # inside the disk's data
    _refused(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), str(layer["digest"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw", layout.name]


def test_a_blob_that_is_a_hard_link_to_another_file_is_refused(tmp_path: Path, raw: Path) -> None:
    layout = oci_artifact_layout(tmp_path, [([(raw.read_bytes(), {})], {})])
    [layer] = _layers(layout)
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret".ljust(raw.stat().st_size, b"\0"))
    blob = _blob(layout, str(layer["digest"]))
    blob.unlink()
    os.link(secret, blob)  # what an owner of the layout plants where fs.protected_hardlinks=0
    _refused(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), str(layer["digest"]))
    assert not (tmp_path / "out.raw").exists()


def test_a_recompressed_layer_is_refused_though_its_stream_is_valid(tmp_path: Path, raw: Path) -> None:
    tar = layer_tar([Entry("disk/disk.img", raw.read_bytes())])
    layout, _ = oci_layout(tmp_path, [gzip.compress(tar, compresslevel=6, mtime=0)])
    [layer] = _layers(layout)
    _blob(layout, str(layer["digest"])).write_bytes(gzip.compress(tar, compresslevel=1, mtime=0))
    _refused(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), str(layer["digest"]))


def test_a_changed_byte_in_a_docker_archives_layer_is_refused(tmp_path: Path, raw: Path) -> None:
    tar = layer_tar([Entry("disk/disk.img", raw.read_bytes())])
    archive = docker_archive(tmp_path, [tar], "localhost/cdisk-digest:1")
    data = archive.read_bytes()
    at = data.index(raw.read_bytes()[:4096])
    _flip(archive, at + 100)
    diff_id = f"sha256:{hashlib.sha256(tar).hexdigest()}"
    _refused(cdisk("convert", "-q", f"docker-archive:{archive}", tmp_path / "out.raw"), diff_id)
    assert not (tmp_path / "out.raw").exists()


def test_refresh_verify_and_serve_refuse_it_too_and_touch_nothing(tmp_path: Path, raw: Path) -> None:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", raw.read_bytes())])])
    target = tmp_path / "vm.raw"
    assert cdisk("refresh", "-q", f"oci:{layout}", target).code == 0
    before = (target.read_bytes(), (tmp_path / "vm.raw.cdisk.json").read_bytes(), target.stat().st_mtime_ns)
    newer = make_disk(tmp_path / "newer.raw", "raw", "4M", 0x6B)
    changed, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", newer.read_bytes())])])
    [layer] = _layers(changed)
    _flip(_blob(changed, str(layer["digest"])), 1024 + 8192)
    _refused(cdisk("refresh", "-q", f"oci:{changed}", target), str(layer["digest"]))
    assert (target.read_bytes(), (tmp_path / "vm.raw.cdisk.json").read_bytes(), target.stat().st_mtime_ns) == before
    _refused(cdisk("verify", "-q", f"oci:{changed}", target), str(layer["digest"]))
    _refused(cdisk("serve", "-q", "--socket", tmp_path / "nbd.sock", f"oci:{changed}"), str(layer["digest"]))
    assert not (tmp_path / "nbd.sock").exists()


def test_what_a_blob_that_fails_its_digest_holds_is_never_told(tmp_path: Path, raw: Path) -> None:
    # The blob became a qcow2 naming a backing file: its header is refused for what it names, but the name must
    # not be told (it came from a file the planter could not read) — the digest is the answer, in every command.
    layout = oci_artifact_layout(tmp_path, [([(raw.read_bytes(), {})], {})])
    [layer] = _layers(layout)
    planted, backing = tmp_path / "planted.qcow2", tmp_path / "very-secret-name.img"
    backing.write_bytes(b"\0" * 512)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(planted), "4M"],
                   check=True)
    blob = _blob(layout, str(layer["digest"]))
    blob.unlink()
    os.link(planted, blob)
    for command in (["convert", "-q", f"oci:{layout}", tmp_path / "out.raw"], ["ls", "-q", f"oci:{layout}"],
                    ["ls", "-q", "--json", f"oci:{layout}"]):
        result = cdisk(*command)
        _refused(result, str(layer["digest"]))
        assert "secret" not in result.err + result.out
