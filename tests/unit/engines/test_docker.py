"""Which of an image's repo digests is the one of the reference it was asked for (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.engines.docker import digest_for


@pytest.mark.parametrize(("reference", "repo_digests", "digest"), [
    ("127.0.0.1:5000/vm/a:1", ["other.io/vm/a@sha256:aa", "127.0.0.1:5000/vm/a@sha256:bb"], "sha256:bb"),
    ("docker.io/library/fedora:40", ["quay.io/x/fedora@sha256:aa", "fedora@sha256:cc"], "sha256:cc"),
    ("fedora", ["quay.io/x/fedora@sha256:aa"], "sha256:aa"),
    ("localhost/built:1", [], ""),
], ids=["registry-port", "hub-familiar", "only-another", "none"])
def test_the_digest_is_the_references_own(reference: str, repo_digests: list[str], digest: str) -> None:
    assert digest_for(reference, repo_digests) == digest
