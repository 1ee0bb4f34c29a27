"""`head_digest` against the suite's real registry (Debian's docker-registry): the digest skopeo's manifest
hashes to, for an image and for a multi-arch index, asked with one HEAD and no manifest GET (a counting proxy in
front of the registry sees every request); a dead mirror passed over for the registry itself; docker's daemon
settings read from the suite's own dockerd."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from cdisk.core.engines import docker
from cdisk.core.engines.registry import Answer, config, head_digest
from tests.images import Entry, layer_tar, oci_artifact_layout, oci_layout, sh
from tests.registries import free_port
from tests.unit.engines.registry.servers import counting_proxy

pytestmark = pytest.mark.needs("skopeo")

INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registries.conf of the test's own (and no system drop-ins), written by the test once it has pushed."""
    monkeypatch.setattr(config, "SYSTEM_REGISTRIES_DIR", tmp_path / "no-drop-ins")
    monkeypatch.setattr(config, "SYSTEM_REGISTRIES_CONF", tmp_path / "no-registries.conf")
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))
    return tmp_path / "registries.conf"


def pushed(layout: Path, registry: str, many: bool = False) -> tuple[str, str, bytes]:
    """The layout pushed to a new repository of `registry`: its reference, and the digest of the manifest skopeo
    reads there and that manifest's bytes."""
    ref = f"{registry}/cdisk/head-{uuid.uuid4().hex[:8]}:v1"
    sh("skopeo", "copy", "--quiet", *(["--all"] if many else []), "--dest-tls-verify=false", f"oci:{layout}",
       f"docker://{ref}")
    raw = sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout.encode()
    return ref, "sha256:" + hashlib.sha256(raw).hexdigest(), raw


def insecure(conf: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    conf.write_text(text)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))


def test_one_head_gives_skopeos_digest(registry: str, isolated: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/vm.img", data=b"\x11" * 4096)])])
    ref, digest, _ = pushed(layout, registry)
    with counting_proxy(registry) as (proxy, seen):
        insecure(isolated, monkeypatch, f'[[registry]]\nlocation = "{proxy}"\ninsecure = true\n')
        asked = ref.replace(registry, proxy, 1)
        assert head_digest(asked, "podman") == Answer(digest, proxy, "")
    repository, tag = ref.removeprefix(f"{registry}/").rsplit(":", 1)
    assert seen == [("HEAD", f"/v2/{repository}/manifests/{tag}")]  # one HEAD; no ping, no manifest GET


def test_a_multi_arch_tag_is_its_indexs_digest(registry: str, isolated: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    layout = oci_artifact_layout(tmp_path, [
        ([(b"\x21" * 4096, {})], {"platform": {"os": "linux", "architecture": "amd64"}}),
        ([(b"\x22" * 4096, {})], {"platform": {"os": "linux", "architecture": "arm64"}}),
    ])
    ref, digest, raw = pushed(layout, registry, many=True)
    assert json.loads(raw)["mediaType"] == INDEX
    with counting_proxy(registry) as (proxy, seen):
        insecure(isolated, monkeypatch, f'[[registry]]\nlocation = "{proxy}"\ninsecure = true\n')
        assert head_digest(ref.replace(registry, proxy, 1), "podman") == Answer(digest, proxy, "")
    assert [method for method, _ in seen] == ["HEAD"]
    # Without the index among the Accept values, the registry would have answered with something else.
    assert digest != "sha256:" + hashlib.sha256(
        (layout / "blobs/sha256" / json.loads(raw)["manifests"][0]["digest"][7:]).read_bytes()).hexdigest()


def test_a_dead_mirror_then_the_registry(registry: str, isolated: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/vm.img", data=b"\x31" * 4096)])])
    ref, digest, _ = pushed(layout, registry)
    dead = f"127.0.0.1:{free_port()}"  # closed again: nothing listens there
    insecure(isolated, monkeypatch, f'[[registry]]\nprefix = "mirrored.example"\nlocation = "{registry}"\n'
                                    f'insecure = true\nmirror = [{{location = "{dead}", insecure = true}}]\n')
    asked = ref.replace(registry, "mirrored.example", 1)
    assert head_digest(asked, "podman") == Answer(digest, registry, "")
    # The registry without the tag: both are named in why.
    answer = head_digest(asked.replace(":v1", ":v2"), "podman")
    assert answer == Answer("", "", f"{registry}: 404: no such repository or tag (mirrors also failed: {dead}: "
                                    "unreachable: connection refused)")


@pytest.mark.needs("docker")
def test_docker_reads_its_daemons_settings(registry: str, docker_host: str, isolated: Path, tmp_path: Path) -> None:
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/vm.img", data=b"\x41" * 4096)])])
    ref, digest, _ = pushed(layout, registry)
    docker.registry_config.cache_clear()
    try:
        # 127.0.0.0/8 is an insecure registry to dockerd unless told otherwise: plain http is allowed.
        assert head_digest(ref, "docker") == Answer(digest, registry, "")
        assert "127.0.0.0/8" in config.docker_registry_config(docker_host.removeprefix("unix://"))[
            "InsecureRegistryCIDRs"]
    finally:
        docker.registry_config.cache_clear()
