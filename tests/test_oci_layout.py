"""Layer blobs of a saved image: trusted by their bytes, not their labels."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cdisk.core.errors import ImageError, UnsafeImageError
from cdisk.core.oci_layout import layer_blobs, read_layer


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
    [member] = read_layer(blob, 0)
    assert (member.path, member.offset, member.size) == ("disk/d.img", 512, 4)


@pytest.mark.parametrize(
    ("data", "name"), [(gzip.compress(_plain_tar()), "gzip"), (b"\x28\xb5\x2f\xfd" + bytes(100), "zstd")]
)
def test_a_really_compressed_layer_is_refused(tmp_path: Path, data: bytes, name: str) -> None:
    layout, image_id = _layout(tmp_path, data, "application/vnd.oci.image.layer.v1.tar")
    [blob] = layer_blobs(layout, image_id)
    with pytest.raises(UnsafeImageError, match=f"{name}-compressed"):
        read_layer(blob, 0)


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    layout, image_id = _layout(tmp_path, b"\x01" * 1024, "application/vnd.oci.image.layer.v1.tar")
    [blob] = layer_blobs(layout, image_id)
    with pytest.raises(UnsafeImageError, match="not a readable tar"):
        read_layer(blob, 0)


def test_wrong_image_and_hostile_digest(tmp_path: Path) -> None:
    layout, _ = _layout(tmp_path, _plain_tar(), "application/vnd.oci.image.layer.v1.tar")
    with pytest.raises(ImageError, match="no manifest for image"):
        layer_blobs(layout, "0" * 64)
    (layout / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:../../etc/passwd"}]}))
    with pytest.raises(ImageError, match="not a sha256 digest"):
        layer_blobs(layout, "0" * 64)
