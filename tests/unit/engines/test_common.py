"""What podman and docker share: a name told from a path, and a registry's refusal cut to its cause (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.engines.common import has_registry, is_reference, pull_reason

IMAGE_ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("said", "reason"),
    [
        ('initializing source docker://127.0.0.1:1/x/fedora:41: pinging container registry 127.0.0.1:1: Get '
         '"https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
         "dial tcp 127.0.0.1:1: connect: connection refused"),
        ("initializing source docker://r.io/x:1: reading manifest 1 in r.io/x: manifest unknown: manifest unknown",
         "manifest unknown"),
        ('pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": http: server gave HTTP '
         "response to HTTPS client", "http: server gave HTTP response to HTTPS client"),
        ('Get "https://quay.iox/v2/": dial tcp: lookup quay.iox on 10.0.0.1:53: no such host',
         "dial tcp: lookup quay.iox on 10.0.0.1:53: no such host"),
        ("pull access denied for fedoraa, repository does not exist or may require 'docker login': denied: "
         "requested access to the resource is denied",
         "pull access denied for fedoraa, repository does not exist or may require 'docker login': denied: "
         "requested access to the resource is denied"),
        ('short-name "fedoraa" did not resolve to an alias and no unqualified-search registries are defined in '
         '"/etc/containers/registries.conf"',
         'short-name "fedoraa" did not resolve to an alias and no unqualified-search registries are defined in '
         '"/etc/containers/registries.conf"'),
        ('Error parsing image name "docker://127.0.0.1:1/vm:1": pinging container registry 127.0.0.1:1: Get '
         '"https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
         "dial tcp 127.0.0.1:1: connect: connection refused"),  # skopeo's
        ("2 errors occurred:\n\t* one\n\t* two", "2 errors occurred: * one * two"),
        ("initializing source docker://x:1: ", "initializing source docker://x:1:"),  # nothing after: kept whole
    ],
    ids=["refused", "manifest-unknown", "plain-http", "no-such-host", "docker-denied", "short-name", "skopeo", "lines",
         "wrapper-only"],
)
def test_pull_reason_is_the_cause_on_one_line(said: str, reason: str) -> None:
    assert pull_reason(said) == reason


def test_pull_reason_is_bounded() -> None:
    reason = pull_reason("x" * 1000)
    assert len(reason) == 300 and reason.endswith("…")


@pytest.mark.parametrize(
    ("text", "name"),
    [("fedora", True), ("quay.io/containerdisks/fedora:40", True), ("127.0.0.1:5000/vm/a:1", True),
     ("localhost/vm", True), ("vm.tar", True), (f"quay.io/vm@sha256:{IMAGE_ID}", True), (IMAGE_ID[:12], True),
     (f"sha256:{IMAGE_ID}", True), ("/srv/layout", False), ("./vm.tar", False), ("../vm", False), ("vm/", False),
     ("Fedora", False), ("quay.io/x/Fedora", False), ("dir:/srv/x", False), ("", False)],
)
def test_is_reference_tells_a_name_from_what_can_name_no_image(text: str, name: bool) -> None:
    assert is_reference(text) is name


@pytest.mark.parametrize(
    ("reference", "qualified"),
    [("quay.io/vm:1", True), ("127.0.0.1:5000/vm", True), ("localhost/vm", True), ("fedora", False),
     ("library/fedora", False), ("quay.io", False)],
)
def test_has_registry(reference: str, qualified: bool) -> None:
    assert has_registry(reference) is qualified
