"""Documents read as Go reads them (skopeo and podman decode with encoding/json): a field takes the last key
that equals its name under case folding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cdisk.core.oci.go_json import loads
from tests.conftest import cdisk, same_disk
from tests.images import Entry, layer_tar, make_disk, oci_layout


def test_a_field_takes_the_last_key_that_folds_to_its_name() -> None:
    document = loads(b'{"config": 1, "Config": 2, "\\u017fize": 3, "\\u212aind": 4, "notes": {"a": 1, "A": 2}}')
    assert (document.get("config"), document["config"], document.get("size"), document.get("kind")) == (2, 2, 3, 4)
    assert "CONFIG" in document and "other" not in document
    assert dict(document["notes"].items()) == {"a": 1, "A": 2}  # a map's keys are exact, as in a Go map


@pytest.mark.needs("qemu-img", "bwrap")
def test_a_manifest_that_names_its_layers_twice_is_read_as_skopeo_reads_it(tmp_path: Path) -> None:
    decoy = make_disk(tmp_path / "decoy.raw", "raw", "4M", 0x11)
    real = make_disk(tmp_path / "real.raw", "raw", "4M", 0x22)
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", decoy.read_bytes())]),
                                      layer_tar([Entry("disk/disk.img", real.read_bytes())])])
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads(manifest_path.read_text())
    lower = manifest["layers"][0]
    # `layers` names the decoy only, `LAYERS` after it both: Go keeps the second (the real disk on top).
    text = json.dumps(manifest).replace('"layers": ', f'"layers": {json.dumps([lower])}, "LAYERS": ', 1)
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(real, "raw", tmp_path / "out.raw", "raw")
