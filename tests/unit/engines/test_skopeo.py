"""What a registry's tag holds now, asked with `skopeo inspect --raw` (a fake skopeo first on PATH, so no
registry is needed): the manifest's digest, an index's entry for the platform, and why there is no answer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.engines.skopeo import tag_digests

LIST = "application/vnd.oci.image.index.v1+json"


def fake_skopeo(bin_dir: Path, answer: bytes | None, said: str = "") -> Path:
    """A skopeo that writes its arguments beside itself, then prints `answer` (None: fails as skopeo does, with
    `said`)."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "answer").write_bytes(answer or b"")
    argv = bin_dir / "argv"
    run = f'cat {bin_dir / "answer"}\nexit 0' if answer is not None else \
        f"echo 'time=\"2026-12-06T19:51:07Z\" level=fatal msg=\"{said}\"' >&2\nexit 1"
    (bin_dir / "skopeo").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\n{run}\n')
    (bin_dir / "skopeo").chmod(0o755)
    return argv


def digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(("tls_verify", "switch"), [(None, []), (False, ["--tls-verify=false"]),
                                                    (True, ["--tls-verify=true"])])
def test_a_manifests_digest_is_that_of_its_bytes(tmp_path: Path, tls_verify: bool | None, switch: list[str]) -> None:
    raw = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}\n'
    argv = fake_skopeo(tmp_path / "bin", raw)
    with local.env(PATH=f"{tmp_path / 'bin'}:{local.env['PATH']}"):
        assert tag_digests("quay.io/vm:1", tls_verify, "linux/amd64") == (frozenset({digest(raw)}), "")
    assert argv.read_text().splitlines() == ["inspect", "--raw", "--retry-times", "0", *switch, "--",
                                             "docker://quay.io/vm:1"]


def test_an_index_gives_its_own_digest_and_its_entries_for_the_platform(tmp_path: Path) -> None:
    entries = [{"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
               {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
               {"digest": "sha256:win", "platform": {"os": "windows", "architecture": "arm64"}}]
    raw = json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": entries}).encode()
    fake_skopeo(tmp_path / "bin", raw)
    with local.env(PATH=f"{tmp_path / 'bin'}:{local.env['PATH']}"):
        assert tag_digests("quay.io/vm:1", None, "linux/arm64") == (frozenset({digest(raw), "sha256:arm"}), "")


def test_no_answer_is_no_digest_and_skopeos_own_words(tmp_path: Path) -> None:
    fake_skopeo(tmp_path / "bin", None, "pinging container registry 127.0.0.1:1: connection refused")
    with local.env(PATH=f"{tmp_path / 'bin'}:{local.env['PATH']}"):
        assert tag_digests("127.0.0.1:1/vm:1", None, "linux/amd64") == (
            frozenset(), "pinging container registry 127.0.0.1:1: connection refused")
