"""Which of an image's repo digests is the one of the reference it was asked for; what a `docker save` that failed
says (a fake docker: pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.engines.docker import digest_for, save
from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, ToolError


@pytest.mark.parametrize(("reference", "repo_digests", "digest"), [
    ("127.0.0.1:5000/vm/a:1", ["other.io/vm/a@sha256:aa", "127.0.0.1:5000/vm/a@sha256:bb"], "sha256:bb"),
    ("docker.io/library/fedora:40", ["quay.io/x/fedora@sha256:aa", "fedora@sha256:cc"], "sha256:cc"),
    ("fedora", ["quay.io/x/fedora@sha256:aa"], "sha256:aa"),
    ("localhost/built:1", [], ""),
], ids=["registry-port", "hub-familiar", "only-another", "none"])
def test_the_digest_is_the_references_own(reference: str, repo_digests: list[str], digest: str) -> None:
    assert digest_for(reference, repo_digests) == digest


# --- an image removed under `docker save`: one line, exit 3 ----------------------------------------------------

_DAEMON_SAID = {
    "gone": "Error response from daemon: No such image: 1234",
    "layer gone": "Error response from daemon: failed to get digest sha256:ab: open /var/lib/docker/image/overlay2/"
                  "layerdb/sha256/ab/diff: no such file or directory",
}


@pytest.mark.parametrize("said", sorted(_DAEMON_SAID))
def test_a_save_racing_an_rmi_is_told_removed(tmp_path: Path, said: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho '{_DAEMON_SAID[said]}' >&2\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)
    image = Image("localhost/vm:1", "1" * 64, "", "amd64", 1, (), engine="docker")
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"), pytest.raises(ImageError) as raised:
        save(image, tmp_path)
    assert str(raised.value) == ("localhost/vm:1 was removed or replaced in docker's store while cdisk read it (an rmi "
                                 "or prune by another job?); run cdisk again")


def test_a_save_that_fails_otherwise_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho 'write /tmp/x: no space left on device' >&2\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)
    image = Image("localhost/vm:1", "1" * 64, "", "amd64", 1, (), engine="docker")
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"), pytest.raises(ToolError, match="no space left"):
        save(image, tmp_path)
