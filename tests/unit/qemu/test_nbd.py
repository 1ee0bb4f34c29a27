"""NBD endpoints: `--listen` addresses and the URIs clients are given (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.errors import UsageError
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


@pytest.mark.parametrize("text", ["0.0:10809", "*:10809", "0x0:10809", "0:10809", "127.1:10809", "1.2.3.4.5:1",
                                  "[::ffff:0.0.0.0]:10809", "[::ffff:127.0.0.1]:10809"])
def test_listen_takes_no_short_form_of_an_address(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


def test_a_uri_names_an_undecodable_name_by_its_bytes() -> None:
    assert Endpoint(host="127.0.0.1").uri("disk/a\udc9b.img") == "nbd://127.0.0.1:10809/disk/a%9B.img"

