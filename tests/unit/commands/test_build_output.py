"""build's output under a temp name of its own, beside it (`build.image._new_path`): written through the held
descriptor, never through a name another user swapped for a link meanwhile, and renamed into place only if the
name is still its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdisk.core import leftovers
from cdisk.core.commands.build.image import _new_path
from cdisk.core.errors import TargetError


def test_an_archive_is_written_through_its_descriptor_and_renamed(tmp_path: Path) -> None:
    out = tmp_path / "vm.tar"
    with _new_path(str(out), "archive") as (temp, held):
        assert Path(temp).name.startswith(".vm.tar.") and temp.endswith(".cdisk-part")
        os.write(held, b"layer")
    assert out.read_bytes() == b"layer" and oct(out.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.tar"]


def test_a_layout_directory_loses_the_sweeps_mark(tmp_path: Path) -> None:
    out = tmp_path / "vm"
    with _new_path(str(out), "oci: directory", directory=True) as (temp, _):
        assert (Path(temp) / leftovers.MARK).exists() and temp.endswith(".cdisk-dir")
        (Path(temp) / "index.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["index.json"]


@pytest.mark.parametrize("directory", [False, True], ids=["archive", "layout"])
def test_a_temp_name_swapped_for_a_link_is_neither_followed_nor_published(tmp_path: Path, directory: bool) -> None:
    victim = tmp_path / "victim"
    victim.mkdir() if directory else victim.write_bytes(b"the operator's key")
    out = tmp_path / "vm"
    with pytest.raises(TargetError, match=r"was replaced while cdisk wrote it; write"), \
            _new_path(str(out), "output", directory=directory) as (temp, _):
        os.rename(temp, tmp_path / "moved")
        os.symlink(victim, temp)
    assert not out.exists()
    assert victim.is_dir() if directory else victim.read_bytes() == b"the operator's key"
    assert os.path.islink(temp), "removed what another put in its place"
    os.unlink(temp)
    if directory:
        (tmp_path / "moved" / leftovers.MARK).unlink(missing_ok=True)
        os.rmdir(tmp_path / "moved")
    else:
        os.unlink(tmp_path / "moved")


def test_the_config_is_in_image_spec_1_1_order_as_podman_5_encodes_it_again() -> None:
    """Go's json.Marshal of image-spec 1.1.0's Image, byte for byte (podman 5's `save` decodes and encodes the
    config again: other bytes would be another digest, another ID): variant after os."""
    from cdisk.core.commands.build.image import ImageSpec, config
    from cdisk.core.commands.build.layer import Layer
    from cdisk.core.oci.platform import Platform

    layer = Layer("sha256:" + "a" * 64, 1, "sha256:" + "b" * 64, "application/vnd.oci.image.layer.v1.tar")
    spec = ImageSpec(Platform("linux", "arm64", "v8"), labels={"z": "<&>", "a": "1"}, env=("A=1",), created=60)
    assert config(spec, layer) == (
        b'{"created":"1970-01-01T00:01:00Z","architecture":"arm64","os":"linux","variant":"v8",'
        b'"config":{"Env":["A=1"],"Labels":{"a":"1","z":"\\u003c\\u0026\\u003e"}},'
        b'"rootfs":{"type":"layers","diff_ids":["sha256:' + b"b" * 64 + b'"]},'
        b'"history":[{"created":"1970-01-01T00:01:00Z","created_by":"cdisk build"}]}')
