"""A reference split as the registry API needs it; Docker Hub's names normalised as distribution does."""

from __future__ import annotations

import pytest

from cdisk.core.engines.common import has_registry
from cdisk.core.engines.registry.reference import Reference, parse_reference

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(("text", "expected"), [
    ("quay.io/x/y:tag", Reference("quay.io", "x/y", "tag")),
    ("localhost:5000/a:b", Reference("localhost:5000", "a", "b")),
    ("localhost/a", Reference("localhost", "a", "latest")),
    ("docker.io/library/alpine:3", Reference("docker.io", "library/alpine", "3")),
    ("docker.io/alpine", Reference("docker.io", "library/alpine", "latest")),
    ("index.docker.io/alpine:edge", Reference("docker.io", "library/alpine", "edge")),
    ("docker.io/bitnami/redis", Reference("docker.io", "bitnami/redis", "latest")),
    ("alpine", Reference("docker.io", "library/alpine", "latest")),
    ("127.0.0.1:5000/ns/sub/img:1.0-rc_1", Reference("127.0.0.1:5000", "ns/sub/img", "1.0-rc_1")),
    ("[::1]:5000/img:t", Reference("[::1]:5000", "img", "t")),
    (f"quay.io/x/y@sha256:{HEX}", Reference("quay.io", "x/y", "", f"sha256:{HEX}")),
    (f"quay.io/x/y:t@sha256:{HEX}", Reference("quay.io", "x/y", "", f"sha256:{HEX}")),
])
def test_references_split(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_names_and_the_api_host() -> None:
    hub = parse_reference("docker.io/alpine:3")
    assert (hub.name, hub.text, hub.api_host) == ("docker.io/library/alpine", "docker.io/library/alpine:3",
                                                  "registry-1.docker.io")
    local = parse_reference("localhost:5000/a")
    assert (local.text, local.api_host) == ("localhost:5000/a:latest", "localhost:5000")


@pytest.mark.parametrize("text", ["quay.io/X/y", "quay.io/x/y:", "quay.io/x/y@sha256:12", "quay.io/",
                                  "quay.io/x/../y", "quay.io/x y", "quay.io/x/y:t\r\nHost: evil",
                                  "quay.io/x/y:" + "t" * 129, "quay.io/x//y", "-host.io/x"])
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(text)


@pytest.mark.parametrize(("text", "expected"), [("quay.io/x", True), ("localhost/x", True), ("h:5000/x", True),
                                                ("library/alpine", False), ("alpine", False)])
def test_qualified(text: str, expected: bool) -> None:
    assert has_registry(text) is expected  # the one rule the registry client and refresh share
