"""An OCI layout: layer blobs of a saved image, trusted by their bytes, not their labels; the names of disks
that are an artifact's layers."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cdisk.core.disk.wanted import Wanted
from cdisk.core.errors import ImageError, UnsafeImageError
from cdisk.core.layers.saved import SavedLayers, read_layer
from cdisk.core.oci.blob import close_blobs
from cdisk.core.oci.layout import disk_names, layer_blobs
from cdisk.core.progress import NoProgress
from tests.images import TAR_END, pax_header, tar_member

TITLE = "org.opencontainers.image.title"


def _layout(tmp_path: Path, layer: bytes, media_type: str) -> tuple[Path, str]:
    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest

    config_id = put(b'{"rootfs": {}}')
    layer_id = put(layer)
    manifest = put(
        json.dumps(
            {
                "config": {"digest": f"sha256:{config_id}"},
                "layers": [{"mediaType": media_type, "digest": f"sha256:{layer_id}"}],
            }
        ).encode()
    )
    (tmp_path / "index.json").write_text(json.dumps({"manifests": [{"digest": f"sha256:{manifest}"}]}))
    return tmp_path, config_id


def _plain_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("disk/d.img")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"abcd"))
    return buf.getvalue()


def test_plain_tar_labelled_gzip_is_read_by_its_bytes(tmp_path: Path) -> None:
    layout, image_id = _layout(tmp_path, _plain_tar(), "application/vnd.oci.image.layer.v1.tar+gzip")
    [blob] = layer_blobs(layout, image_id)
    [member] = [m for m in read_layer(blob, 0) if m.kind == "file"]
    assert (member.path, member.offset, member.size) == ("disk/d.img", 512, 4)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"BZh91AY&SY" + bytes(100), "bzip2"),
        (b"\xfd7zXZ\x00" + bytes(100), "xz"),
    ],
)
def test_a_layer_compressed_otherwise_than_gzip_or_zstd_is_refused(tmp_path: Path, data: bytes, name: str) -> None:
    layout, image_id = _layout(tmp_path, data, "application/vnd.oci.image.layer.v1.tar")
    blobs = layer_blobs(layout, image_id)
    try:
        with pytest.raises(UnsafeImageError, match=f"{name}-compressed"):
            SavedLayers(blobs, Wanted.disk(None), str(tmp_path), NoProgress())
    finally:
        close_blobs(blobs)


def test_not_a_tar_is_refused_in_one_line(tmp_path: Path) -> None:
    layout, image_id = _layout(tmp_path, b"\x01" * 1024, "application/vnd.oci.image.layer.v1.tar")
    [blob] = layer_blobs(layout, image_id)
    with pytest.raises(UnsafeImageError, match=r"layer [0-9a-f]{12} is refused: a block that is not a tar header "
                                                r"\(bad checksum\) at byte 0; rebuild the image") as caught:
        read_layer(blob, 0)
    assert caught.value.exit_code == 5 and "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("member", "says"),
    [
        # Python's tarfile took "0o" as octal where Go refuses the header
        (tar_member("disk/b", b"x", fields={108: b"0o12345\x00"}), "uid field is not a number"),
        # and raised a raw ValueError (exit 1) on a sparse size
        (pax_header([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"abc")])
         + tar_member("disk/b", b"1\n0\n0\n"), "sparse member whose size is not a number"),
    ],
)
def test_unparsable_field_is_refused_not_a_raw_error(tmp_path: Path, member: bytes, says: str) -> None:
    raw = tar_member("disk/a", b"abcd") + member + TAR_END
    layout, image_id = _layout(tmp_path, raw, "application/vnd.oci.image.layer.v1.tar")
    [blob] = layer_blobs(layout, image_id)
    with pytest.raises(UnsafeImageError, match=rf"{says} .*at byte (1024|2048); rebuild"):
        read_layer(blob, 0)


@pytest.mark.parametrize(
    "data",
    [b"", tar_member(b"\x1f\x8b-not-gzip", b"j") + tar_member("disk/d.img", b"abcd") + TAR_END],
    ids=["empty-blob", "1f8b-name"],
)
def test_what_podman_takes_as_a_plain_tar(tmp_path: Path, data: bytes) -> None:
    # containers/storage: gzip is 1f 8b 08, and a 0-byte layer is an empty tar.
    layout, image_id = _layout(tmp_path, data, "application/vnd.oci.image.layer.v1.tar")
    [blob] = layer_blobs(layout, image_id)
    assert [(m.path, m.offset) for m in read_layer(blob, 0) if m.kind == "file"] == (
        [("\x1f\udc8b-not-gzip", 512), ("disk/d.img", 1536)] if data else []
    )


def test_wrong_image_and_hostile_digest(tmp_path: Path) -> None:
    layout, _ = _layout(tmp_path, _plain_tar(), "application/vnd.oci.image.layer.v1.tar")
    with pytest.raises(ImageError, match="no manifest for image"):
        layer_blobs(layout, "0" * 64)
    (layout / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:../../etc/passwd"}]}))
    with pytest.raises(ImageError, match="not a sha256 digest"):
        layer_blobs(layout, "0" * 64)


def test_disk_names_never_clash_and_survive_any_json_string() -> None:
    def titled(*titles: str | None) -> list[dict[str, object]]:
        return [{"annotations": {TITLE: t}} if t is not None else {} for t in titles]

    # a fallback name is never taken by a title, and a title never by a fallback
    assert disk_names(titled("layer-1", None)) == ["layer-0", "layer-1"]
    assert disk_names(titled("\ud800x", "a\0b", "", ".x", "a/b/vm.img", "vm.img")) == [
        "layer-0", "layer-1", "layer-2", "layer-3", "vm.img", "layer-5"]
    assert disk_names(titled("layer-12x")) == ["layer-12x"]
