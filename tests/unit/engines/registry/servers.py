"""Tiny registries for the tests of `cdisk.core.engines.registry`, on 127.0.0.1 in a thread: a fake one that
demands a token (or a Basic login) and counts requests by method, and a counting proxy in front of a real one."""

from __future__ import annotations

import base64
import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DIGEST = "sha256:" + "ab" * 32
TOKEN = "tok.en-123"


def insecure(conf: Path, *locations: str) -> None:
    """registries.conf at `conf`, each of `locations` an insecure registry (these servers speak plain http)."""
    conf.write_text("".join(f'[[registry]]\nlocation = "{loc}"\ninsecure = true\n' for loc in locations))


def basic_entry(user: str, password: str) -> dict[str, str]:
    """An auth file's entry for `user`:`password`."""
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass(frozen=True)
class Seen:
    """One request the server got: method, path (with query), and its header lines in order."""

    method: str
    path: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class FakeRegistry:
    """A registry API with one tag. `auth`: "bearer" (a token from /token, Basic-authenticated when
    `users` has entries), "basic", or "" (open). `challenge_on_head`: whether a HEAD's 401 carries the
    challenge (else only `GET /v2/` does, as gcr.io). `digest`: the Docker-Content-Digest sent (None: none)."""

    auth: str = "bearer"
    users: dict[str, str] = field(default_factory=dict)
    challenge_on_head: bool = True
    digest: str | None = DIGEST
    repository: str = "ns/img"
    tag: str = "v1"
    status: int = 200
    token_body: bytes | None = None
    seen: list[Seen] = field(default_factory=list)
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    address: str = ""

    @property
    def methods(self) -> Counter[str]:
        return Counter(s.method for s in self.seen)

    def _authorized(self, headers: list[tuple[str, str]]) -> bool:
        given = [v for k, v in headers if k.lower() == "authorization"]
        if self.auth == "":
            return True
        if self.auth == "bearer":
            return given == [f"Bearer {TOKEN}"]
        return any(v == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in self.users.items()
                   for v in given)

    def _login_ok(self, headers: list[tuple[str, str]]) -> bool:
        if not self.users:
            return True
        given = [v for k, v in headers if k.lower() == "authorization"]
        return any(v == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in self.users.items()
                   for v in given)

    def challenge(self) -> str:
        if self.auth == "basic":
            return 'Basic realm="fake"'
        return f'Bearer realm="http://{self.address}/token",service="fake-registry",scope="x"'

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        headers = list(handler.headers.items())
        self.seen.append(Seen(handler.command, handler.path, headers))
        path = urlsplit(handler.path)
        if path.path == "/token":
            query = parse_qs(path.query)
            if handler.command == "POST":
                form = parse_qs(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)).decode())
                self.forms.append(form)
                query = form if form.get("refresh_token") == ["idt"] else {}
            elif not self._login_ok(headers):
                query = {}
            scope = query.get("scope") or [""]
            if len(scope) != 1 or not scope[0].startswith("repository:") or not scope[0].endswith(":pull"):
                return _send(handler, 401)
            body = self.token_body if self.token_body is not None else b'{"token": "%s"}' % TOKEN.encode()
            return _send(handler, 200, body=body, kind="application/json")
        if not self._authorized(headers):
            on_ping = path.path == "/v2/"
            extra = {"WWW-Authenticate": self.challenge()} if self.challenge_on_head or on_ping else {}
            return _send(handler, 401, extra)
        if path.path == "/v2/":
            return _send(handler, 200)
        if path.path != f"/v2/{self.repository}/manifests/{self.tag}":
            return _send(handler, 404)
        extra = {"Docker-Content-Digest": self.digest} if self.digest is not None else {}
        _send(handler, self.status, extra, body=b"{}" if handler.command == "GET" else b"", length=2)


def _send(handler: BaseHTTPRequestHandler, status: int, extra: dict[str, str] | None = None, body: bytes = b"",
          kind: str = "", length: int | None = None) -> None:
    handler.send_response(status)
    for key, value in (extra or {}).items():
        handler.send_header(key, value)
    if kind:
        handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if body:
        handler.wfile.write(body)


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(registry: FakeRegistry) -> Iterator[FakeRegistry]:
    """`registry` served on 127.0.0.1 (its `address` set) while the block runs."""

    class Handler(_Quiet):
        def do_HEAD(self) -> None:
            registry.answer(self)

        do_GET = do_POST = do_HEAD

    with _served(Handler) as address:
        registry.address = address
        yield registry


@contextmanager
def _served(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def counting_proxy(upstream: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A plain-http reverse proxy in front of the registry at `upstream`: its address, and the (method, path)
    of every request it passed on, in order."""
    seen: list[tuple[str, str]] = []

    class Handler(_Quiet):
        def do_HEAD(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(upstream, timeout=30)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    conn.putheader(key, value)
                conn.endheaders(body)
                response = conn.getresponse()
                data = response.read() if self.command != "HEAD" else b""
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                length_said = response.getheader("Content-Length")
                self.send_header("Content-Length", length_said if self.command == "HEAD" and length_said
                                 else str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD

    with _served(Handler) as address:
        yield address, seen
