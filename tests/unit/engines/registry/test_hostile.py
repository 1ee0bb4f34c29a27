"""What a hostile registry or a hostile file can make of `head_digest`: never an exception, never a credential
sent where it does not belong."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from cdisk.core.engines.registry import head_digest
from tests.unit.engines.registry.servers import FakeRegistry, _Quiet, _served, insecure, serving


def test_a_token_nested_past_the_stack_is_no_answer_not_a_crash(registries_conf: Path) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000  # under the 1 MiB bound
    with serving(FakeRegistry(token_body=deep)) as reg:
        insecure(registries_conf, reg.address)
        said = head_digest(f"{reg.address}/ns/img:v1", "podman")
    assert said.digest == "" and said.reached


@pytest.mark.parametrize("text", ["a = " + "[" * 200_000 + "]" * 200_000 + "\n", '[registries]\nblock = ["x"]\n'])
def test_a_registries_conf_that_is_no_configuration_is_no_answer_not_a_crash(registries_conf: Path,
                                                                             text: str) -> None:
    registries_conf.write_text(text)
    said = head_digest("127.0.0.1:1/ns/img:v1", "podman")
    assert said.digest == "" and said.why


def test_credentials_go_to_no_host_a_redirect_names(registries_conf: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry redirects its HEAD to another host, whose 401 names a token realm of its own: the registry's
    credentials are not sent there."""
    seen: list[list[str]] = []

    class Elsewhere(_Quiet):
        def do_HEAD(self) -> None:  # every request: a challenge naming its own realm, and what it was sent
            seen.append([v for k, v in self.headers.items() if k.lower() == "authorization"])
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{self.headers["Host"]}/token",service="x"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

    with _served(Elsewhere) as other:
        class Redirecting(_Quiet):
            def do_HEAD(self) -> None:
                self.send_response(307)
                self.send_header("Location", f"http://{other}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        handler: type[BaseHTTPRequestHandler] = Redirecting
        with _served(handler) as address:
            insecure(registries_conf, address, other)
            auth = tmp_path / "auth.json"
            secret = base64.b64encode(b"me:s3cret").decode()
            auth.write_text(json.dumps({"auths": {address: {"auth": secret}, other: {}}}))
            monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
            said = head_digest(f"{address}/ns/img:v1", "podman")
    assert said.digest == "" and "s3cret" not in said.why
    assert seen and all(given == [] for given in seen)
