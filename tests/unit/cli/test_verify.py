"""What `cdisk verify IMAGE` prints: one line when the image is intact, one line per damaged layer otherwise."""

from __future__ import annotations

from cdisk.cli.output import LaidOut
from cdisk.cli.verify import image_summary
from cdisk.core.commands.verify import ImageVerdict, LayerFinding

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _verdict(checked: str, *layers: LayerFinding) -> ImageVerdict:
    return ImageVerdict("localhost/x", "podman", "id", all(layer.intact for layer in layers), checked, 42,
                        list(layers))


def test_an_intact_image_is_one_line() -> None:
    assert image_summary(_verdict("diff IDs", LayerFinding(A, "/s/a/diff", A, True, [], ""))) == \
        "localhost/x: 1 layer(s) hash to their diff IDs (42 bytes of content read)"


def test_one_line_per_damaged_layer_naming_the_file() -> None:
    text = image_summary(_verdict(
        "diff IDs",
        LayerFinding(A, "/s/a/diff", B, False, ["disk/\x1b[2Jx.qcow2"],
                     "differs from what the layer's metadata says (CRC-64)"),
        LayerFinding(B, "/s/b/diff", B, True, [], ""),
        LayerFinding(B, "/s/c/diff", A, False, ["etc/motd"], "etc/motd: No such file or directory")))
    assert isinstance(text, LaidOut)
    assert text.splitlines() == [
        f"layer {A}: disk/\\x1b[2Jx.qcow2 differs from what the layer's metadata says (CRC-64); the store is "
        "damaged: remove the image and pull it again",
        f"layer {B}: etc/motd: No such file or directory; the store is damaged: remove the image and pull it again"]


def test_a_file_source_s_blob_is_named_by_its_file() -> None:
    text = image_summary(_verdict("digests", LayerFinding(A, "/l/blobs/sha256/a", B, False, [], f"hashes to {B}")))
    assert text == (f"layer {A} in /l/blobs/sha256/a: hashes to {B}; the file was changed or damaged: save or pull "
                    "the image again")
