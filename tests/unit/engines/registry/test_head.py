"""The HTTP exchange against a tiny registry of the test's own: one HEAD with c/image's Accept lines, the token
flow (anonymous, with a login, with an identity token), Basic, the `/v2/` ping for a challenge-less 401, what is
no digest, mirrors in order, https only unless insecure, the deadline, and no secret in any answer."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from cdisk.core.engines.registry import Answer, config, head, head_digest
from tests.registries import free_port
from tests.unit.engines.registry.servers import DIGEST, TOKEN, FakeRegistry, basic_entry, insecure, serving

ACCEPT = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
          "application/vnd.docker.distribution.manifest.v1+prettyjws",
          "application/vnd.docker.distribution.manifest.v1+json",
          "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json"]


def login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, entry: dict[str, str]) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {key: entry}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # closed again: nothing listens there


def test_one_head_with_an_anonymous_token(registries_conf: Path) -> None:
    with serving(FakeRegistry()) as reg:
        insecure(registries_conf, reg.address)
        assert head_digest(f"{reg.address}/ns/img:v1", "podman") == Answer(DIGEST, reg.address, "")
    assert [(s.method, s.path.split("?")[0]) for s in reg.seen] == [
        ("HEAD", "/v2/ns/img/manifests/v1"), ("GET", "/token"), ("HEAD", "/v2/ns/img/manifests/v1")]
    first, token, second = reg.seen
    assert first.header("Accept") == ACCEPT  # each its own line, c/image's order
    assert first.header("Docker-Distribution-API-Version") == ["registry/2.0"]
    assert first.header("User-Agent")[0].startswith("cdisk/")
    assert first.header("Authorization") == [] and token.header("Authorization") == []
    assert token.path == "/token?service=fake-registry&scope=repository%3Ans%2Fimg%3Apull"
    assert second.header("Authorization") == [f"Bearer {TOKEN}"] and second.header("Accept") == ACCEPT


def test_a_401_without_a_challenge_pings_v2(registries_conf: Path) -> None:
    with serving(FakeRegistry(challenge_on_head=False)) as reg:
        insecure(registries_conf, reg.address)
        assert head_digest(f"{reg.address}/ns/img:v1", "podman").digest == DIGEST
    assert [(s.method, s.path.split("?")[0]) for s in reg.seen] == [
        ("HEAD", "/v2/ns/img/manifests/v1"), ("GET", "/v2/"), ("GET", "/token"), ("HEAD", "/v2/ns/img/manifests/v1")]


def test_a_token_with_a_login(registries_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(FakeRegistry(users={"me": "s3cret"})) as reg:
        insecure(registries_conf, reg.address)
        assert "401" in head_digest(f"{reg.address}/ns/img:v1", "podman").why  # anonymous: no token
        login(tmp_path, monkeypatch, reg.address, basic_entry("me", "wrong"))
        answer = head_digest(f"{reg.address}/ns/img:v1", "podman")
        assert answer.digest == "" and "token endpoint answered HTTP 401" in answer.why
        assert "wrong" not in answer.why
        login(tmp_path, monkeypatch, f"{reg.address}/ns", basic_entry("me", "s3cret"))
        reg.seen.clear()
        assert head_digest(f"{reg.address}/ns/img:v1", "podman").digest == DIGEST
    token = reg.seen[1]
    assert token.path.startswith("/token?account=me&service=fake-registry&scope=")
    assert token.header("Authorization") == ["Basic " + base64.b64encode(b"me:s3cret").decode()]


def test_an_identity_token_is_exchanged(registries_conf: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(FakeRegistry(users={"me": "unused"})) as reg:
        insecure(registries_conf, reg.address)
        login(tmp_path, monkeypatch, reg.address, {"identitytoken": "idt"})
        assert head_digest(f"{reg.address}/ns/img:v1", "podman").digest == DIGEST
    assert reg.methods == Counter({"HEAD": 2, "POST": 1})
    assert reg.forms[0]["grant_type"] == ["refresh_token"] and reg.forms[0]["client_id"] == ["cdisk"]


def test_basic_auth(registries_conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(FakeRegistry(auth="basic", users={"me": "pw"})) as reg:
        insecure(registries_conf, reg.address)
        answer = head_digest(f"{reg.address}/ns/img:v1", "podman")
        assert answer == Answer("", "", f"{reg.address}: 401: the registry wants a login (Basic) and there are no "
                                        "credentials")
        login(tmp_path, monkeypatch, reg.address, basic_entry("me", "pw"))
        assert head_digest(f"{reg.address}/ns/img:v1", "podman").digest == DIGEST
    assert reg.seen[-1].header("Authorization") == ["Basic " + base64.b64encode(b"me:pw").decode()]


@pytest.mark.parametrize(("registry", "reference", "why"), [
    (FakeRegistry(), "ns/img:v2", "404: no such repository or tag"),
    (FakeRegistry(), "ns/other:v1", "404: no such repository or tag"),
    (FakeRegistry(digest=None), "ns/img:v1", "200 without a Docker-Content-Digest header"),
    (FakeRegistry(digest="sha512:" + "a" * 128), "ns/img:v1", "the Docker-Content-Digest header is no sha256 digest"),
    (FakeRegistry(digest="sha256:" + "A" * 64), "ns/img:v1", "the Docker-Content-Digest header is no sha256 digest"),
    (FakeRegistry(status=429), "ns/img:v1", "429: too many requests (rate limited)"),
    (FakeRegistry(status=500), "ns/img:v1", "HTTP 500"),
    (FakeRegistry(token_body=b'{"token": "other"}'), "ns/img:v1", "401 after authentication (anonymous)"),
    (FakeRegistry(token_body=b'{"access_token": "bad token\\r\\nX: y"}'), "ns/img:v1",
     "the token endpoint answered no token"),
    (FakeRegistry(token_body=b"<html>"), "ns/img:v1", "the token endpoint answered no JSON"),
    (FakeRegistry(token_body=b'{"token": "' + b"x" * (1 << 20) + b'"}'), "ns/img:v1",
     "the token endpoint answered more than 1 MiB"),
])
def test_what_is_no_digest(registries_conf: Path, registry: FakeRegistry, reference: str, why: str) -> None:
    with serving(registry) as reg:
        insecure(registries_conf, reg.address)
        assert head_digest(f"{reg.address}/{reference}", "podman") == Answer("", "", f"{reg.address}: {why}")
    assert "GET" not in {s.method for s in reg.seen if "/manifests/" in s.path}


def test_an_access_token_is_taken_too(registries_conf: Path) -> None:
    with serving(FakeRegistry(token_body=b'{"access_token": "%s"}' % TOKEN.encode())) as reg:
        insecure(registries_conf, reg.address)
        assert head_digest(f"{reg.address}/ns/img:v1", "podman").digest == DIGEST


def test_a_secure_registry_is_never_asked_over_http(registries_conf: Path) -> None:
    with serving(FakeRegistry(auth="")) as reg:
        answer = head_digest(f"{reg.address}/ns/img:v1", "podman")
        assert answer.digest == "" and answer.why.startswith(f"{reg.address}: unreachable: TLS failed")
        assert reg.seen == []
        assert head_digest(f"{reg.address}/ns/img:v1", "podman", tls_verify=False).digest == DIGEST
        registries_conf.write_text(f'[[registry]]\nlocation = "{reg.address}"\ninsecure = true\n')
        assert head_digest(f"{reg.address}/ns/img:v1", "podman", tls_verify=True).digest == ""
    assert [s.method for s in reg.seen] == ["HEAD"]


def test_a_dead_mirror_then_the_primary(registries_conf: Path) -> None:
    dead = dead_address()
    with serving(FakeRegistry()) as reg:
        registries_conf.write_text(f'[[registry]]\nprefix = "quay.io/ns"\nlocation = "{reg.address}/ns"\n'
                                   f'insecure = true\nmirror = [{{location = "{dead}/ns", insecure = true}}]\n')
        assert head_digest("quay.io/ns/img:v1", "podman") == Answer(DIGEST, reg.address, "")


def test_a_live_mirror_answers_first(registries_conf: Path) -> None:
    with serving(FakeRegistry(repository="cache/ns/img")) as mirror, serving(FakeRegistry()) as primary:
        registries_conf.write_text(
            f'[[registry]]\nprefix = "quay.io"\nlocation = "{primary.address}"\ninsecure = true\n'
            f'mirror = [{{location = "{mirror.address}/cache", insecure = true}}]\n')
        assert head_digest("quay.io/ns/img:v1", "podman") == Answer(DIGEST, mirror.address, "")
    assert primary.seen == []


def test_every_endpoint_failing_names_each(registries_conf: Path) -> None:
    dead = dead_address()
    with serving(FakeRegistry()) as reg:
        registries_conf.write_text(f'[[registry]]\nprefix = "quay.io/ns"\nlocation = "{reg.address}/ns"\n'
                                   f'insecure = true\nmirror = [{{location = "{dead}/ns", insecure = true}}]\n')
        answer = head_digest("quay.io/ns/nothing:v1", "podman")
    assert answer == Answer("", "", f"{reg.address}: 404: no such repository or tag (mirrors also failed: "
                                    f"{dead}: unreachable: connection refused)")


def test_a_registry_that_never_answers_is_bounded(registries_conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head, "TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connects, never answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        insecure(registries_conf, address)
        answer = head_digest(f"{address}/ns/img:v1", "podman")
    assert answer == Answer("", "", f"{address}: unreachable: timed out")


def test_the_whole_exchange_has_a_deadline(registries_conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head, "TOTAL", 0.4)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        insecure(registries_conf, address)
        started = time.monotonic()
        answer = head_digest(f"{address}/ns/img:v1", "podman")
    assert answer == Answer("", "", f"{address}: unreachable: no answer within 0.4 s")
    assert time.monotonic() - started < 3


def test_docker_follows_its_daemons_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "docker_registry_config", lambda socket: {})
    with serving(FakeRegistry()) as reg:  # 127.0.0.0/8 is insecure to docker by default
        assert head_digest(f"{reg.address}/ns/img:v1", "docker") == Answer(DIGEST, reg.address, "")
        monkeypatch.setattr(config, "docker_registry_config",
                            lambda socket: {"IndexConfigs": {reg.address: {"Secure": True}}})
        assert "TLS failed" in head_digest(f"{reg.address}/ns/img:v1", "docker").why


def test_what_needs_no_registry() -> None:
    digest = "sha256:" + "c" * 64
    assert head_digest(f"quay.io/x/y@{digest}", "podman") == Answer(digest, "", "")
    assert head_digest("alpine:3", "podman").why == ("alpine:3 names no registry; podman would resolve it as a "
                                                     "short name")
    assert "not a valid image reference" in head_digest("quay.io/UPPER", "docker").why
    with pytest.raises(ValueError):
        head_digest("quay.io/x", "file")


def test_a_malformed_registries_conf_is_the_answer(registries_conf: Path) -> None:
    registries_conf.write_text("[[registry]\n")
    answer = head_digest("quay.io/x:1", "podman")
    assert answer.digest == "" and answer.why.startswith(f"registries.conf {registries_conf}: not valid TOML")


@pytest.mark.parametrize(("value", "expected"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
     ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"})),
    ('BASIC Realm="a \\"quoted\\" one", charset=UTF-8', ("basic", {"realm": 'a "quoted" one', "charset": "UTF-8"})),
    ("Bearer", ("bearer", {})),
    ("", None),
])
def test_challenges_parse_as_containers_image(value: str, expected: tuple[str, dict[str, str]] | None) -> None:
    assert head.parse_challenge(value) == expected
