"""Inputs nobody meant to send, round 2: FIFOs where files belong, refresh's record and lock planted, serve's
numbers out of range, --listen's short forms of 0.0.0.0, a layout's file judged before it is opened."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cdisk.core.commands.refresh import read_record, target_lock
from cdisk.core.errors import TargetError, UsageError
from cdisk.core.qemu.nbd import parse_listen
from tests.conftest import cdisk
from tests.images import Entry, layer_tar, make_disk, oci_layout

GOOD = {"image": "oci:/x", "image_id": "ab", "digest": "", "disk": "/disk/disk.img", "source_format": "raw",
        "target_format": "raw", "compressed": False, "size": 1, "mtime_ns": 2}


# --- FIFOs: nothing blocks ------------------------------------------------------------------------------------


def test_build_of_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "disk")
    result = cdisk("build", "-q", "--output", f"oci:{tmp_path / 'out'}", tmp_path / "disk", "localhost/x:1",
                   timeout=30)
    assert result.code == 2 and "is not a regular file" in result.err and result.err.count("\n") == 1, result.err


def test_a_fifo_as_refresh_record_is_no_record(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "vm.raw.cdisk.json")
    assert read_record(str(tmp_path / "vm.raw")) == (None, "it is not a regular file")


def test_a_fifo_as_pid_file_does_not_block(tmp_path: Path) -> None:
    from cdisk.core.commands.daemon import pid_file

    os.mkfifo(tmp_path / "serve.pid")
    with pid_file(str(tmp_path / "serve.pid")):
        assert (tmp_path / "serve.pid").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "serve.pid").exists()


# --- refresh's record and lock --------------------------------------------------------------------------------


@pytest.mark.parametrize(("planted", "why"), [
    (lambda p: p.symlink_to("/dev/zero"), "it is a symlink"),
    (lambda p: p.write_bytes(b" " * (65 << 10)), "it is larger than 65536 bytes"),
    (lambda p: p.write_text(json.dumps({**GOOD, "platform": 123})), "its 'platform' is not a string"),
    (lambda p: p.write_text(json.dumps({**GOOD, "size": True})), "its 'size' is not a whole number"),
    (lambda p: p.write_text(json.dumps({**GOOD, "compressed": 0})), "its 'compressed' is not true or false"),
    (lambda p: p.write_text(json.dumps([GOOD])), "it is not a JSON object"),
    (lambda p: p.write_text("{"), "it is not JSON"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in GOOD.items() if k != "disk"})), "it lacks 'disk'"),
], ids=["symlink-to-dev-zero", "200-kib", "platform-a-number", "size-a-bool", "compressed-a-number", "a-list",
        "not-json", "no-disk"])
def test_a_record_that_is_not_one_counts_as_none_and_says_why(tmp_path: Path, planted: object, why: str) -> None:
    planted(tmp_path / "vm.raw.cdisk.json")  # type: ignore[operator]
    assert read_record(str(tmp_path / "vm.raw")) == (None, why)
    (tmp_path / "vm.raw").write_bytes(b"\0" * 512)
    result = cdisk("refresh", "-q", "--pull", "never", "localhost/cdisk-nothing:1", tmp_path / "vm.raw")
    assert result.code == 6 and f"its record vm.raw.cdisk.json is unreadable ({why}); pass --force" in result.err
    assert (tmp_path / "vm.raw").read_bytes() == b"\0" * 512


def test_records_of_earlier_and_later_versions_are_read(tmp_path: Path) -> None:
    (tmp_path / "vm.raw.cdisk.json").write_text(json.dumps(GOOD))  # no engine, platform, disktype, source
    record, why = read_record(str(tmp_path / "vm.raw"))
    assert why == "" and record is not None and record.engine == "" and record.disk == "/disk/disk.img"
    (tmp_path / "vm.raw.cdisk.json").write_text(json.dumps({**GOOD, "a_later_field": [1]}))
    assert read_record(str(tmp_path / "vm.raw"))[0] == record


def test_a_lock_planted_as_a_symlink_is_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / ".vm.raw.cdisk.lock").symlink_to(elsewhere)  # dangling: O_CREAT would make it
    with pytest.raises(TargetError, match="is a symlink, which refresh never follows"), \
            target_lock(str(tmp_path / "vm.raw"), wait=False):
        pass
    assert not elsewhere.exists()


# --- serve's numbers, --listen --------------------------------------------------------------------------------


@pytest.mark.parametrize("switches", [["--shared", "99999999999999"], ["--shared", "0"], ["--shared", "x"],
                                      ["--socket-mode", "7777"], ["--socket-mode", "rw"]])
def test_serve_numbers_out_of_range_are_one_line(switches: list[str]) -> None:
    result = cdisk("serve", *switches, "localhost/cdisk-nothing:1")
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1, result.err
    assert switches[0] in result.err


@pytest.mark.parametrize("text", ["0.0:10809", "*:10809", "0x0:10809", "0:10809", "127.1:10809", "1.2.3.4.5:1"])
def test_listen_takes_no_short_form_of_an_address(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


# --- a layout's files judged before they are opened -----------------------------------------------------------


@pytest.mark.needs("qemu-img", "bwrap")
def test_a_blob_that_is_a_device_is_judged_not_opened(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.raw", "raw", "4M")
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", disk.read_bytes())])])
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    blob.unlink()
    # A device no driver serves: opened, it fails (ENXIO); judged first, it is refused for what it is.
    os.mknod(blob, 0o600 | stat.S_IFCHR, os.makedev(240, 7))
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 3 and "is not a regular file" in result.err, result.err


@pytest.mark.parametrize("exists", [True, False])
def test_an_index_that_is_a_symlink_tells_nothing_of_its_target(tmp_path: Path, exists: bool) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    target = tmp_path / "root-only"
    if exists:
        target.write_text("{}")
    (layout / "index.json").symlink_to(target)
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 3 and f"{layout} is not an OCI layout (no index.json)" in result.err, result.err
