"""`json:` specs, progress parsing and convert arguments (pure), and the specs on a real qemu-img."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cdisk.core.errors import ToolError
from cdisk.core.qemu import qemu_img
from cdisk.core.qemu.qemu_img import ConvertOptions, convert_argv, file_node, image_spec, parse_progress, slice_node
from tests.images import sh


def test_slice_rounds_size_up_to_a_sector() -> None:
    assert slice_node("/l", 1536, 196616) == {
        "driver": "raw",
        "offset": 1536,
        "size": 197120,
        "file": {"driver": "file", "filename": "/l"},
    }
    assert slice_node("/l", 512, 1024)["size"] == 1024


def test_specs_are_json_with_explicit_driver_and_no_backing() -> None:
    name = '/a "b" \\c,d:e €'
    spec = image_spec("qcow2", file_node(name))
    assert spec.startswith("json:")
    assert json.loads(spec[5:]) == {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": name}}
    raw = image_spec("raw", slice_node(name, 512, 512))
    assert json.loads(raw[5:]) == {
        "driver": "raw",
        "offset": 512,
        "size": 512,
        "backing": None,
        "file": {"driver": "file", "filename": name},
    }


def test_parse_progress() -> None:
    assert parse_progress(b"    (0.00/100%)\r    (12.50/100%)\r    (100.00/100%)\r\n") == [0.0, 12.5, 100.0]
    assert parse_progress(b"garbage (3/100%) (x/100%)") == [3.0]
    assert parse_progress(b"") == []


def test_convert_argv() -> None:
    assert convert_argv("json:{}", "/t", ConvertOptions("raw")) == ["convert", "-p", "-O", "raw", "-W", "json:{}", "/t"]
    assert convert_argv("json:{}", "/t", ConvertOptions("qcow2", compressed=True)) == [
        "convert", "-p", "-O", "qcow2", "-o", "compat=1.1", "-c", "json:{}", "/t"]
    assert convert_argv("json:{}", "/dev/x", ConvertOptions("raw", existing_target=True, target_is_zero=True)) == [
        "convert", "-p", "-O", "raw", "-W", "-n", "--target-is-zero", "json:{}", "/dev/x"]
    # A compressed source's conversion is CPU-bound: qemu-img's most requests in flight.
    assert convert_argv("json:{}", "/t", ConvertOptions("raw", compressed_source=True)) == [
        "convert", "-p", "-O", "raw", "-W", "-m", "16", "json:{}", "/t"]


@pytest.mark.parametrize(("fmt", "compressed", "expected"), [
    ("qcow2", False, ["-O", "qcow2", "-o", "compat=1.1", "-W"]),
    ("vmdk", False, ["-O", "vmdk", "-o", "subformat=monolithicSparse,adapter_type=lsilogic", "-W"]),
    ("vmdk", True, ["-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic", "-c"]),
    ("vhdx", False, ["-O", "vhdx", "-o", "subformat=dynamic", "-W"]),
    ("vpc", False, ["-O", "vpc", "-o", "subformat=dynamic,force_size=on", "-W"]),
    ("vdi", False, ["-O", "vdi", "-W"]),
    ("qed", False, ["-O", "qed"]),  # in order: qemu 7.2's qed asserts under -W
    ("parallels", False, ["-O", "parallels", "-W"]),
])
def test_convert_argv_gives_each_format_the_options_a_host_expects(fmt: str, compressed: bool,
                                                                   expected: list[str]) -> None:
    assert convert_argv("json:{}", "/t", ConvertOptions(fmt, compressed)) == ["convert", "-p", *expected, "json:{}",
                                                                              "/t"]


@pytest.mark.needs("qemu-img", "qemu-io", "bwrap")
def test_measure_with_options(tmp_path: Path) -> None:
    # 4 KiB of data in a 64 MiB disk: one 64 KiB cluster of qcow2's default, one 2 MiB cluster when asked.
    disk = tmp_path / "d.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4k", disk)
    spec = image_spec("qcow2", file_node(str(disk)))
    small = qemu_img.measure(spec, "qcow2")
    large = qemu_img.measure(spec, "qcow2", options=("cluster_size=2M",))
    assert small.required < 2 << 20 <= large.required - (2 << 20) * 2  # header, and the one data cluster
    with pytest.raises(ToolError, match="measure failed"):
        qemu_img.measure(spec, "vmdk")  # what the room check never asks any more


@pytest.mark.needs("qemu-img", "bwrap")
def test_slice_spec_reads_a_member_of_a_real_tar(tmp_path: Path) -> None:
    # A qcow2 inside a file at offset 1536, its length not a sector multiple: info must see the disk.
    disk = tmp_path / "d.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "3M")
    data = disk.read_bytes()
    container = tmp_path / 'odd "name", with: all €'
    container.write_bytes(b"\xee" * 1536 + data + b"\0" * (-len(data) % 512))
    info = qemu_img.info(image_spec("qcow2", slice_node(str(container), 1536, len(data))))
    assert (info.format, info.virtual_size, info.backing) == ("qcow2", 3 << 20, None)


@pytest.mark.needs("qemu-img", "bwrap")
def test_map_lists_where_each_cluster_lies_and_refuses_what_is_not_a_list(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "1M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 64k 64k", disk)
    entries = qemu_img.map_extents(image_spec("qcow2", file_node(str(disk))))
    assert [(e["start"], e["length"], e["data"]) for e in entries] == [
        (0, 64 << 10, False), (64 << 10, 64 << 10, True), (128 << 10, 896 << 10, False)]
    assert "offset" in entries[1]
    with pytest.raises(ToolError, match="map failed"):
        qemu_img.map_extents(image_spec("qcow2", file_node(str(tmp_path / "absent"))))


@pytest.mark.needs("qemu-img", "bwrap")
def test_info_and_check_judge_infos_refusal_before_a_limit_that_stopped_check(tmp_path: Path) -> None:
    """Run at once, judged as if one after the other: info's own refusal is the one told, though check (read
    second) ran into its output bound meanwhile. (In a child of its own: the fakes are found on its PATH.)"""
    import subprocess
    import sys

    from tests.tool_fakes import QemuImgFakes

    disk = tmp_path / "d.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "1M")
    run = ("from cdisk.core.qemu import qemu_img\n"
           "from cdisk.core.errors import UnsafeImageError\n"
           "try:\n"
           f"    qemu_img.info_and_check(qemu_img.image_spec('qcow2', qemu_img.file_node({str(disk)!r})))\n"
           "except UnsafeImageError as error:\n"
           "    print(error)\n")
    flood = "while True: os.write(1, b'y' * 65536)\n"
    refusing = "sys.stderr.write('qemu-img: Image is not in qcow2 format\\n'); sys.exit(1)\n"
    told = []
    for name, hooks in (("both", {"info": refusing, "check": flood}), ("check", {"check": flood})):
        fakes = QemuImgFakes(tmp_path / name, hooks)
        told.append(subprocess.run([sys.executable, "-c", run], env={**os.environ, **fakes.env}, check=True,
                                   capture_output=True, text=True).stdout)
    assert "cannot read the disk: qemu-img: Image is not in qcow2 format" in told[0]
    assert "qemu-img check of the disk printed more than" in told[1]


@pytest.mark.needs("qemu-img", "qemu-io", "bwrap")
def test_check_tells_a_compressed_qcow2_from_a_plain_one(tmp_path: Path) -> None:
    plain = tmp_path / "plain.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", plain, "4M")
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", plain)
    compressed = tmp_path / "compressed.qcow2"
    sh("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", plain, compressed)
    _, counted = qemu_img.info_and_check(image_spec("qcow2", file_node(str(plain))))
    assert counted == qemu_img.Clusters(allocated=16, compressed=False)
    assert qemu_img.check(image_spec("qcow2", file_node(str(compressed)))).compressed
    raw = tmp_path / "d.raw"
    raw.write_bytes(bytes(4096))
    assert qemu_img.check(image_spec("raw", file_node(str(raw)))) == qemu_img.Clusters()
