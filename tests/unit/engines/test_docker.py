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

_GONE = "Error response from daemon: No such image: 1234"
_LAYER_GONE = ("Error response from daemon: failed to get digest sha256:ab: open /var/lib/docker/image/overlay2/"
               "layerdb/sha256/ab/diff: no such file or directory")
_SAME = '{"Id": "sha256:' + "1" * 64 + '", "RepoDigests": []}'


def _fake_docker(tmp_path: Path, save_says: str, inspect_says: str | None) -> str:
    """A docker whose save fails saying `save_says`, and whose inspect prints `inspect_says` (None: no such image)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    inspect = f"echo '{inspect_says}'" if inspect_says else "echo 'Error: No such image: 1234' >&2; exit 1"
    (bin_dir / "docker").write_text(f'#!/bin/sh\ncase "$3" in save) echo \'{save_says}\' >&2; exit 1;; '
                                    f'image) {inspect};; esac\n')
    (bin_dir / "docker").chmod(0o755)
    return f"{bin_dir}:{local.env['PATH']}"


@pytest.mark.parametrize(("save_says", "inspect_says", "layer_dirs"), [
    (_GONE, None, ()),
    (_LAYER_GONE, None, ()),
    (_LAYER_GONE, _SAME, ("/var/lib/docker/overlay2/old/diff",)),  # loaded again: new cache IDs
], ids=["no-such-image", "layer-gone-image-gone", "layer-gone-image-loaded-again"])
def test_a_save_racing_an_rmi_is_told_removed(tmp_path: Path, save_says: str, inspect_says: str | None,
                                              layer_dirs: tuple[str, ...]) -> None:
    image = Image("localhost/vm:1", "1" * 64, "", "amd64", 1, (), engine="docker", layer_dirs=layer_dirs)
    with local.env(PATH=_fake_docker(tmp_path, save_says, inspect_says)), pytest.raises(ImageError) as raised:
        save(image, tmp_path)
    assert str(raised.value) == ("localhost/vm:1 was removed or replaced in docker's store while cdisk read it (an rmi "
                                 "or prune by another job?); run cdisk again")


def test_a_layer_file_gone_from_an_image_still_there_is_damage(tmp_path: Path) -> None:
    image = Image("localhost/vm:1", "1" * 64, "", "amd64", 1, (), engine="docker")
    with local.env(PATH=_fake_docker(tmp_path, _LAYER_GONE, _SAME)), \
            pytest.raises(ToolError, match=r"; check the image with `cdisk verify localhost/vm:1`; remove it and pull"):
        save(image, tmp_path)


def test_a_save_that_fails_otherwise_says_so(tmp_path: Path) -> None:
    image = Image("localhost/vm:1", "1" * 64, "", "amd64", 1, (), engine="docker")
    with local.env(PATH=_fake_docker(tmp_path, "write /tmp/x: no space left on device", _SAME)), \
            pytest.raises(ToolError, match="no space left"):
        save(image, tmp_path)
