"""`cdisk convert` end to end: real images, real podman, real qemu-img, results checked with qemu-img compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_fakes import RecordingEngine
from tests.helpers import Convert, Images, assert_one_line_error, same_disk
from tests.images import Entry, sh


def test_qcow2_disk_converts_to_raw(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    target = tmp_path / "out.raw"
    result = convert(name, target)
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", target, "raw")
    assert "/disk/disk.qcow2 (qcow2, 8.0 MiB)" in result.out
    assert str(target) in result.out


def test_raw_disk_converts(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk("disk.img", fmt="raw", size="4M")
    name = images.build({"disk.img": disk})
    target = tmp_path / "out.raw"
    assert convert(name, target).code == 0
    assert same_disk(disk, "raw", target, "raw")


@pytest.mark.parametrize("extra", [[], ["-c"]], ids=["plain", "compressed"])
def test_output_format_qcow2(convert: Convert, images: Images, tmp_path: Path, extra: list[str]) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    target = tmp_path / "out.qcow2"
    result = convert("-O", "qcow2", *extra, name, target)
    assert result.code == 0, result.err
    info = json.loads(sh("qemu-img", "info", "--output=json", "-f", "qcow2", target).stdout)
    assert info["format"] == "qcow2"
    assert same_disk(disk, "qcow2", target, "qcow2")
    # -c really compresses: the disk's data clusters are stored compressed, and only then.
    check = json.loads(sh("qemu-img", "check", "--output=json", "-f", "qcow2", target).stdout)
    assert check["allocated-clusters"] > 0
    assert check.get("compressed-clusters", 0) == (check["allocated-clusters"] if extra else 0), check


def test_json_output_is_one_object(convert: Convert, method: str, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    target = tmp_path / "out.raw"
    result = convert("--json", name, target)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["disk"] == "/disk/disk.qcow2"
    assert data["source_format"] == "qcow2"
    assert data["virtual_size"] == 8 << 20
    assert data["target"] == str(target)
    assert data["target_format"] == "raw"
    assert data["method"] == method
    assert len(data["image_id"]) == 64


def test_quiet_prints_nothing(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = convert("-q", name, tmp_path / "out.raw")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_references_by_digest_and_id(convert: Convert, engine: str, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    inspect = json.loads(sh(engine, "image", "inspect", name).stdout)[0]
    repo = name.rsplit(":", 1)[0]
    # A docker image has a digest only once pushed or pulled (see test_docker's pulls).
    by_digest = [f"{repo}@{inspect['Digest']}"] if engine == "podman" else []
    image_id = inspect["Id"].removeprefix("sha256:")
    for n, reference in enumerate([*by_digest, image_id, image_id[:12]]):
        target = tmp_path / f"out{n}.raw"
        result = convert("--pull", "never", reference, target)
        assert result.code == 0, (reference, result.err)
        assert same_disk(disk, "qcow2", target, "raw")


def test_pull_never_refuses_a_missing_image(convert: Convert, tmp_path: Path) -> None:
    result = convert("--pull", "never", "localhost/cdisk-test-absent:1", tmp_path / "out.raw")
    assert result.code == 3
    assert "not in the local store" in result.err and "--pull never" in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reference", ["127.0.0.1:1/cdisk/absent:1", "localhost/cdisk-test-unknown-name"])
def test_failed_pull_is_one_clear_line(convert: Convert, tmp_path: Path, reference: str) -> None:
    result = convert("-q", reference, tmp_path / "out.raw")
    assert_one_line_error(result, 3)
    # Where it was looked for comes first, then why the pull failed.
    assert result.err.startswith(f"cdisk: error: {reference} is "), result.err
    assert ", and pulling it failed: " in result.err
    assert "Traceback" not in result.err
    assert list(tmp_path.iterdir()) == []


def test_existing_target_needs_force(convert: Convert, images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    target = tmp_path / "out.raw"
    target.write_bytes(b"precious")
    result = convert(name, target)
    assert result.code == 6 and "--force" in result.err
    assert target.read_bytes() == b"precious"
    assert convert("--force", name, target).code == 0
    assert same_disk(disk, "qcow2", target, "raw")


def test_missing_target_directory(convert: Convert, images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = convert(name, tmp_path / "nope" / "out.raw")
    assert result.code == 6 and "does not exist" in result.err
    assert not (tmp_path / "nope").exists()


def test_awkward_names_for_disk_and_target(convert: Convert, images: Images, tmp_path: Path) -> None:
    awkward = 'dïsk "q" \\ ,co:lon € ' + "long" * 40 + ".qcow2"
    disk = images.disk("plain.qcow2")
    # buildah's COPY mangles quotes and backslashes, so this image's layer is written directly.
    name = images.layers([Entry("disk/" + awkward, data=disk.read_bytes())])
    target = tmp_path / 'tärget "x" \\ ,y:z €.raw'
    result = convert("--json", name, target)
    assert result.code == 0, result.err
    assert json.loads(result.out)["disk"] == "/disk/" + awkward
    assert same_disk(disk, "qcow2", target, "raw")


def test_tmpdir_switch_holds_the_save(convert: Convert, engine: str, method: str, images: Images,
                                      tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    recording = RecordingEngine(tmp_path / "bin", engine)
    result = convert("--tmpdir", scratch, name, out / "vm.raw", env=recording.env)
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")
    if method == "save":
        # The engine saved into the given dir (not beside the target, the default), and the layers were there.
        [save] = recording.saves()
        assert save.code == 0 and str(save.destination).startswith(f"{scratch}/.cdisk-save-"), save.argv
        assert save.saved is not None and ("index.json" if engine == "podman" else "image.tar") in save.saved
        assert max(save.saved.values()) >= disk.stat().st_size  # the layer that holds the disk
    else:
        assert recording.saves() == []  # reading in place copies nothing, wherever --tmpdir points
    assert list(scratch.iterdir()) == []
    assert [p.name for p in out.iterdir()] == ["vm.raw"]


@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "vhdx", "vpc"])
def test_other_disk_formats(convert: Convert, images: Images, tmp_path: Path, fmt: str) -> None:
    disk = images.disk(f"disk.{fmt}", fmt=fmt, size="8M")
    name = images.build({f"disk.{fmt}": disk})
    result = convert("--json", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert json.loads(result.out)["source_format"] == fmt
    assert same_disk(disk, fmt, tmp_path / "out.raw", "raw")
