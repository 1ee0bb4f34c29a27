"""Credentials where each engine finds them: podman's auth files in order and its key lookup, docker's
config.json, credential helpers (a fake `docker-credential-x` on PATH), and nothing but anonymity from files or
helpers that fail."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cdisk.core.engines.registry.auth import (
    FILE_LIMIT,
    Credentials,
    docker_credentials,
    podman_auth_files,
    podman_credentials,
)
from tests.unit.engines.registry.servers import basic_entry


def write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`docker-credential-x` first on PATH: it writes its argv and stdin beside itself, then answers as the
    file `answer` says (its exit code on the first line, its stdout after)."""
    bin_dir = tmp_path / "helper-bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-x"
    script.write_text(f'#!/bin/sh\necho "$@" > {bin_dir}/argv\ncat > {bin_dir}/stdin\n'
                      f'code=$(head -n1 {bin_dir}/answer)\ntail -n +2 {bin_dir}/answer\nexit "$code"\n')
    script.chmod(0o755)
    (bin_dir / "answer").write_text('0\n{"ServerURL": "quay.io", "Username": "hu", "Secret": "hs"}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_podmans_files_in_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert podman_auth_files() == [tmp_path / "run/containers/auth.json", home / ".config/containers/auth.json",
                                   home / ".docker/config.json"]
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "explicit.json"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    assert podman_auth_files() == [tmp_path / "explicit.json", tmp_path / "run/containers/auth.json",
                                   tmp_path / "xdg/containers/auth.json", tmp_path / "dockercfg/config.json"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert podman_auth_files()[1] == Path(f"/run/containers/{os.getuid()}/auth.json")


def test_the_first_file_with_credentials_wins(home: Path, tmp_path: Path) -> None:
    write(home / ".config/containers/auth.json", {"auths": {"quay.io": basic_entry("second", "p2")}})
    write(home / ".docker/config.json", {"auths": {"quay.io": basic_entry("third", "p3")}})
    assert podman_credentials("quay.io", "quay.io/ns/img") == Credentials("second", "p2")
    write(tmp_path / "run/containers/auth.json", {"auths": {"other.io": basic_entry("x", "y")}})
    assert podman_credentials("quay.io", "quay.io/ns/img") == Credentials("second", "p2")
    write(tmp_path / "run/containers/auth.json", {"auths": {"quay.io/ns": basic_entry("first", "p1")}})
    assert podman_credentials("quay.io", "quay.io/ns/img") == Credentials("first", "p1")


def test_repository_keys_before_the_host(home: Path) -> None:
    write(home / ".config/containers/auth.json", {"auths": {
        "quay.io": basic_entry("host", "h"), "quay.io/ns": basic_entry("ns", "n"),
        "quay.io/ns/img": basic_entry("img", "i"),
        "quay.io/other": basic_entry("other", "o")}})
    assert podman_credentials("quay.io", "quay.io/ns/img").username == "img"  # type: ignore[union-attr]
    assert podman_credentials("quay.io", "quay.io/ns/x").username == "ns"  # type: ignore[union-attr]
    assert podman_credentials("quay.io", "quay.io/x/y").username == "host"  # type: ignore[union-attr]
    assert podman_credentials("quay.io:5000", "quay.io:5000/ns/img") is None


def test_docker_hub_under_its_index_url(home: Path) -> None:
    write(home / ".docker/config.json",
          {"auths": {"https://index.docker.io/v1/": basic_entry("hub", "pw:with:colons")}})
    assert podman_credentials("docker.io", "docker.io/library/alpine") == Credentials("hub", "pw:with:colons")
    assert docker_credentials("docker.io") == Credentials("hub", "pw:with:colons")
    assert docker_credentials("quay.io") is None


def test_an_empty_entry_and_an_identity_token(home: Path) -> None:
    write(home / ".config/containers/auth.json", {"auths": {
        "quay.io/ns": {}, "quay.io": {"auth": "", "identitytoken": "refresh-me"}}})
    assert podman_credentials("quay.io", "quay.io/ns/img") == Credentials("", "", "refresh-me")


def test_podman_asks_the_hosts_helper_first(home: Path, helper: Path) -> None:
    write(home / ".config/containers/auth.json", {"credHelpers": {"quay.io": "x"},
                                                  "auths": {"quay.io": basic_entry("file", "f")}})
    assert podman_credentials("quay.io", "quay.io/ns/img") == Credentials("hu", "hs")
    assert (helper / "argv").read_text() == "get\n"
    assert (helper / "stdin").read_text() == "quay.io"


def test_registries_conf_helpers(home: Path, helper: Path) -> None:
    write(home / ".config/containers/auth.json", {"auths": {"quay.io": basic_entry("file", "f")}})
    assert podman_credentials("quay.io", "quay.io/a", ("x", "containers-auth.json")) == Credentials("hu", "hs")
    (helper / "answer").write_text("1\ncredentials not found in native keychain\n")
    assert podman_credentials("quay.io", "quay.io/a", ("x", "containers-auth.json")) == Credentials("file", "f")
    assert podman_credentials("quay.io", "quay.io/a", ("x",)) is None


def test_docker_helpers_then_the_store(home: Path, helper: Path) -> None:
    write(home / ".docker/config.json", {"credsStore": "x", "credHelpers": {"quay.io": "missing"},
                                         "auths": {"ghcr.io": basic_entry("file", "f")}})
    assert docker_credentials("ghcr.io") == Credentials("hu", "hs")  # the store, not the file's entry
    assert (helper / "stdin").read_text() == "ghcr.io"
    assert docker_credentials("docker.io") == Credentials("hu", "hs")
    assert (helper / "stdin").read_text() == "https://index.docker.io/v1/"
    assert docker_credentials("quay.io") is None  # its helper is not installed: anonymous


def test_an_identity_token_from_a_helper(home: Path, helper: Path) -> None:
    write(home / ".docker/config.json", {"credsStore": "x"})
    (helper / "answer").write_text('0\n{"Username": "<token>", "Secret": "idt"}\n')
    assert docker_credentials("quay.io") == Credentials("", "", "idt")


@pytest.mark.parametrize("answer", ["1\n", "0\nnot json\n", '0\n["x"]\n', '0\n{"Username": "u"}\n',
                                   "0\n" + "x" * (70 << 10) + "\n"])
def test_a_failing_helper_is_anonymous(home: Path, helper: Path, answer: str) -> None:
    write(home / ".docker/config.json", {"credsStore": "x"})
    (helper / "answer").write_text(answer)
    assert docker_credentials("quay.io") is None


def test_a_helper_that_hangs_is_stopped(home: Path, helper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdisk.core.engines.registry import auth as module

    monkeypatch.setattr(module, "HELPER_SECONDS", 0.5)
    (helper / "docker-credential-x").write_text("#!/bin/sh\nexec sleep 30\n")
    write(home / ".docker/config.json", {"credsStore": "x"})
    assert docker_credentials("quay.io") is None


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden"])
def test_helper_names_are_names(home: Path, helper: Path, name: str) -> None:
    write(home / ".docker/config.json", {"credsStore": name})
    assert docker_credentials("quay.io") is None
    assert not (helper / "argv").exists()


@pytest.mark.parametrize("content", [b"not json", b"[1]", b'{"auths": []}', b'{"auths": {"quay.io": "x"}}',
                                     b'{"auths": {"quay.io": {"auth": "!!!"}}}',
                                     b'{"auths": {"quay.io": {"auth": "bm9jb2xvbg=="}}}'])
def test_broken_files_are_anonymous(home: Path, content: bytes) -> None:
    (home / ".docker").mkdir()
    (home / ".docker/config.json").write_bytes(content)
    assert docker_credentials("quay.io") is None
    assert podman_credentials("quay.io", "quay.io/a") is None


def test_large_or_unreadable_files_are_not_read(home: Path) -> None:
    path = write(home / ".config/containers/auth.json", {"auths": {"quay.io": basic_entry("u", "p")},
                                                         "pad": "x" * FILE_LIMIT})
    assert podman_credentials("quay.io", "quay.io/a") is None
    path.unlink()
    os.mkfifo(path)
    assert podman_credentials("quay.io", "quay.io/a") is None  # never waits for a writer


def test_no_secret_in_a_repr() -> None:
    assert "hs" not in repr(Credentials("hu", "hs")) and "idt" not in repr(Credentials("", "", "idt"))
