"""The blockdev options `serve --all` gives qemu-storage-daemon for a disk's `json:` spec (pure)."""

from __future__ import annotations

import json

from cdisk.core.commands.serve import blockdev
from cdisk.core.qemu import qemu_img


def test_blockdev_of_a_spec() -> None:
    qcow2 = qemu_img.image_spec("qcow2", qemu_img.file_node("/dev/fd/3"))
    assert blockdev(qcow2, "disk0") == {"driver": "qcow2", "backing": None, "file": {"driver": "file",
                                        "filename": "/dev/fd/3"}, "node-name": "disk0", "read-only": True}
    # A raw slice: blockdev's raw driver has no "backing" (qemu-img's json: ignores it).
    raw = qemu_img.image_spec("raw", qemu_img.slice_node("/tmp/layer.tar", 1536, 1000))
    assert json.loads(raw[5:])["backing"] is None
    assert blockdev(raw, "disk1") == {"driver": "raw", "offset": 1536, "size": 1024, "file": {
        "driver": "file", "filename": "/tmp/layer.tar"}, "node-name": "disk1", "read-only": True}
    vpc = qemu_img.image_spec("vpc", qemu_img.file_node("/dev/fd/4"))
    assert "backing" not in blockdev(vpc, "disk2")


def test_a_qcow2_in_a_slice_is_mapped_only_within_the_slice() -> None:
    # A qcow2 member of a saved layer: its last cluster may start inside the member and end past it (qemu-img
    # check lets that pass); qemu reads no byte after the slice, so cdisk's server may not serve the tar's next ones.
    from cdisk.core.commands.serve import _extents, _file_of

    node = {"driver": "raw", "offset": 1536, "size": 196608,
            "file": {"driver": "file", "filename": "/dev/fd/5"}}
    assert _file_of(node) == ("/dev/fd/5", 1536, 1536 + 196608)
    inside = [{"start": 0, "length": 65536, "data": True, "zero": False, "offset": 131072}]
    past = [{"start": 0, "length": 65536, "data": True, "zero": False, "offset": 196608 - 4096}]
    assert _extents(inside, 1536, 65536, 1536 + 196608) == [(0, 65536, 1536 + 131072)]
    assert _extents(past, 1536, 65536, 1536 + 196608) is None
    assert _file_of({"driver": "file", "filename": "/dev/fd/5"}) == ("/dev/fd/5", 0, None)


def test_a_server_that_ends_before_it_answers_is_told_with_its_last_word_and_the_way_on(tmp_path: object) -> None:
    import subprocess
    import sys

    import pytest

    from cdisk.core import processes
    from cdisk.core.commands.serve import RAW_SERVER, _ready
    from cdisk.core.errors import ToolError
    from cdisk.core.qemu.nbd import Endpoint

    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('no such file: /usr/lib/python3')"],
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors = processes.StderrTail(proc.stderr)
    with pytest.raises(ToolError) as told:
        _ready(proc, Endpoint(socket=f"{tmp_path}/nobody.sock"), errors, RAW_SERVER)
    assert told.value.message == (f"{RAW_SERVER} failed to start: no such file: /usr/lib/python3; run again with "
                                  "--debug for all it said, and `cdisk --version -v` for what this host lacks")
