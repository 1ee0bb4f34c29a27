"""NBD endpoints and the blockdev options of `serve --all`: pure, no tools."""

from __future__ import annotations

import json

import pytest

from cdisk.core.commands.serve import blockdev
from cdisk.core.errors import UsageError
from cdisk.core.qemu import qemu_img
from cdisk.core.qemu.nbd import Endpoint, parse_listen


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:10900", "127.0.0.1", 10900),
    ("localhost", "localhost", 10809),
    ("[::1]:10901", "::1", 10901),
    ("[fe80::1]", "fe80::1", 10809),
    ("::1", "::1", 10809),
    ("0.0.0.0:10809", "0.0.0.0", 10809),  # every interface only when named
])
def test_listen_addresses(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == Endpoint(host=host, port=port)


@pytest.mark.parametrize("text", ["", ":10809", "10809", "host:", "host:0", "host:65536", "host:x", "[::1",
                                  "[::1]x", "[nothost]:1", "a:b:c"])
def test_listen_refusals(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


def test_uris() -> None:
    assert Endpoint(socket="/run/a b/nbd.sock").uri("disk/disk.img") == \
        "nbd+unix:///disk/disk.img?socket=/run/a%20b/nbd.sock"
    assert Endpoint(host="::1", port=10900).uri("disk/x y.qcow2") == "nbd://[::1]:10900/disk/x%20y.qcow2"
    assert Endpoint(host="127.0.0.1").uri("disk/downloaded") == "nbd://127.0.0.1:10809/disk/downloaded"


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
