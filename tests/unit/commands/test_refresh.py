"""refresh's record and lock, planted by whoever can write beside TARGET: a record is small, a regular file and
of the right shape, or it is none (and says why); the lock is never followed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cdisk.core.commands.refresh import read_record, target_lock
from cdisk.core.errors import TargetError

GOOD = {"image": "oci:/x", "image_id": "ab", "digest": "", "disk": "/disk/disk.img", "source_format": "raw",
        "target_format": "raw", "compressed": False, "size": 1, "mtime_ns": 2}


def test_a_fifo_as_refresh_record_is_no_record(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "vm.raw.cdisk.json")
    assert read_record(str(tmp_path / "vm.raw")) == (None, "it is not a regular file")


@pytest.mark.parametrize(("planted", "why"), [
    (lambda p: p.symlink_to("/dev/zero"), "it is a symlink"),
    (lambda p: p.write_bytes(b" " * (65 << 10)), "it is larger than 65536 bytes"),
    (lambda p: p.write_text(json.dumps({**GOOD, "platform": 123})), "its 'platform' is not a string"),
    (lambda p: p.write_text(json.dumps({**GOOD, "size": True})), "its 'size' is not a whole number"),
    (lambda p: p.write_text(json.dumps({**GOOD, "compressed": 0})), "its 'compressed' is not true or false"),
    (lambda p: p.write_text(json.dumps([GOOD])), "it is not a JSON object"),
    (lambda p: p.write_text("{"), "it is not JSON"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in GOOD.items() if k != "disk"})), "it lacks 'disk'"),
    (lambda p: p.write_text("[" * 60000), "it is not JSON"),
], ids=["symlink-to-dev-zero", "200-kib", "platform-a-number", "size-a-bool", "compressed-a-number", "a-list",
        "not-json", "no-disk", "nested-beyond-recursion"])
def test_a_record_that_is_not_one_counts_as_none_and_says_why(tmp_path: Path, planted: object, why: str) -> None:
    planted(tmp_path / "vm.raw.cdisk.json")  # type: ignore[operator]
    assert read_record(str(tmp_path / "vm.raw")) == (None, why)


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


@pytest.mark.parametrize(("reference", "engine", "asked"), [
    ("quay.io/containerdisks/fedora:40", "auto", "quay.io/containerdisks/fedora:40"),
    ("docker://quay.io/x/y", "auto", "quay.io/x/y"),
    ("127.0.0.1:5000/x/y:1", "podman", "127.0.0.1:5000/x/y:1"),
    ("localhost:5000/x/y", "docker", "localhost:5000/x/y"),
    ("localhost/built-here:latest", "auto", None),  # podman's name for an image built on this host
    ("fedora:40", "auto", None),  # a short name: the engine's search rules
    ("quay.io/x/y@sha256:" + "a" * 64, "auto", None),  # a digest moves nowhere
    ("0123456789ab", "auto", None),  # an ID
    ("containers-storage:quay.io/x/y", "auto", None),
    ("docker-daemon:quay.io/x/y:1", "auto", None),
    ("oci:/srv/layout", "auto", None),
    ("quay.io/x/y", "file", None),
])
def test_what_refresh_asks_a_registry_about(reference: str, engine: str, asked: str | None) -> None:
    from cdisk.core.commands.refresh import _tag_of
    from cdisk.core.request import ImageRequest

    assert _tag_of(ImageRequest(reference, engine=engine)) == asked
