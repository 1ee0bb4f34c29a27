"""The HTTP exchange: one `HEAD /v2/<repo>/manifests/<tag>` asked as containers/image asks it, authenticated
as the registry's 401 says, and the digest taken from `Docker-Content-Digest`.

The request carries c/image's six Accept values, each its own header line and in its order (manifest/manifest.go
DefaultRequestedManifestMIMETypes; for a multi-arch tag the registry then answers with the index's digest), and
`Docker-Distribution-API-Version: registry/2.0`. Unlike c/image, which pings `GET /v2/` first for the challenge,
the HEAD goes first and its own 401's `WWW-Authenticate` is used: on Docker Hub, quay.io and ghcr.io that saves a
request. A 401 without a challenge (gcr.io answers so) is followed by the `/v2/` ping c/image would have made.
Bearer: a token from the realm (Basic credentials only when there are some; an identity token as OAuth2), then
the HEAD once more; Basic: the HEAD once more with the credentials. https first; plain http only for an insecure
endpoint, and only when https could not connect.

Bounds: each connect and each read 10 s, the whole exchange of a reference 30 s (a timer cuts a socket at the
deadline), 3 redirects, a token answer of 1 MiB, nothing read from a HEAD. No answer or error here carries a
credential or a token.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlencode, urljoin, urlsplit

from cdisk import __version__
from cdisk.core.engines.registry.auth import Credentials
from cdisk.core.engines.registry.config import Endpoint
from cdisk.core.engines.registry.reference import SHA256_DIGEST

ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
USER_AGENT = f"cdisk/{__version__}"
TIMEOUT = 10.0  # each connect, each read
TOTAL = 30.0  # everything asked for one reference
REDIRECTS = 3
BODY_LIMIT = 1 << 20
CLIENT_ID = "cdisk"  # the OAuth2 client_id an identity token is exchanged under (c/image: containers/image)
_TOKEN68 = re.compile(r"[\x21-\x7e]+")  # what may follow `Bearer ` on a header line
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf"\s*({_TCHAR})=(?:({_TCHAR})|\"((?:[^\"\\]|\\.)*)\")\s*")

Credentialed = Callable[[], Credentials | None]


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Message
    body: bytes
    url: str


def parse_challenge(value: str) -> tuple[str, dict[str, str]] | None:
    """One `WWW-Authenticate` line as c/image reads it (parseValueAndParams): the scheme, lowercased, and its
    parameters (keys lowercased); None when the line names no scheme. One challenge per line."""
    match = re.match(_TCHAR, value)
    if not match:
        return None
    scheme, rest, params = match.group(0).lower(), value[match.end():], {}
    rest = "," + rest.lstrip(" \t")
    while rest.startswith(","):
        param = _PARAM.match(rest, 1)
        if not param:
            break
        quoted = param.group(3)
        params[param.group(1).lower()] = param.group(2) if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
        rest = rest[param.end():]
    return scheme, params


def _challenges(headers: Message) -> list[tuple[str, dict[str, str]]]:
    return [c for line in headers.get_all("WWW-Authenticate") or [] if (c := parse_challenge(str(line)))]


def _context(endpoint: Endpoint, verify: bool) -> ssl.SSLContext:
    """TLS as the engine would: the system's CAs plus the registry's certs.d directory (`*.crt` CAs, a
    `*.cert`/`*.key` client pair); no verification for an insecure endpoint."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for directory in endpoint.cert_dirs:
        try:
            files = sorted(directory.iterdir())
        except OSError:
            continue
        for path in files:
            try:
                if path.suffix == ".crt":
                    context.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert" and path.with_suffix(".key").is_file():
                    context.load_cert_chain(str(path), str(path.with_suffix(".key")))
            except (OSError, ValueError):
                continue  # as unreadable as absent: the handshake says the rest
    return context


class _Exchange:
    """The requests of one reference at one endpoint, under one deadline."""

    def __init__(self, endpoint: Endpoint, credentials: Credentialed, deadline: float) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.deadline = deadline
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {TOTAL:g} s")
        return min(TIMEOUT, left)

    def _once(self, method: str, url: str, headers: Mapping[str, str | tuple[str, ...]], body: bytes | None,
              read: bool) -> _Answer:
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            verify = not self.endpoint.insecure
            if verify not in self._contexts:
                self._contexts[verify] = _context(self.endpoint, verify)
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self._timeout(), context=self._contexts[verify])
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self._timeout())
        cut = threading.Timer(max(self.deadline - time.monotonic(), 0.0), _cut, (conn,))
        cut.daemon = True
        try:
            conn.connect()
            cut.start()
            target = parts.path or "/"
            conn.putrequest(method, target + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
            for name, value in headers.items():
                for one in (value,) if isinstance(value, str) else value:
                    conn.putheader(name, one)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = b""
            if read and method != "HEAD":
                data = response.read(BODY_LIMIT + 1)
            return _Answer(response.status, response.msg, data, url)
        finally:
            cut.cancel()
            conn.close()

    def request(self, method: str, url: str, headers: Mapping[str, str | tuple[str, ...]],
                body: bytes | None = None, read: bool = False) -> _Answer:
        """The answer to `method url`, redirects followed (at most `REDIRECTS`; never from https to http unless
        the endpoint is insecure; `Authorization` dropped on a redirect to another host).

        Raises:
            OSError, http.client.HTTPException: no answer (the deadline included).
        """
        headers = dict(headers)
        for _ in range(REDIRECTS + 1):
            answer = self._once(method, url, headers, body, read)
            location = answer.headers.get("Location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            target = urljoin(url, str(location))
            old, new = urlsplit(url), urlsplit(target)
            if new.scheme not in ("http", "https") or (old.scheme == "https" and new.scheme == "http"
                                                       and not self.endpoint.insecure):
                return answer
            if new.netloc != old.netloc:
                headers.pop("Authorization", None)
            if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                headers.pop("Content-Type", None)
            url = target
        return answer

    def token(self, params: dict[str, str], scheme: str) -> tuple[str, str]:
        """A bearer token from the challenge's realm for pulling the repository, or "" and why not."""
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "", "the registry's Bearer challenge names no usable realm"
        credentials = self.credentials()
        if credentials is not None and parts.scheme == "http" and not self.endpoint.insecure:
            credentials = None  # never a password over plain http to a registry taken as secure
        query = [("service", params["service"])] if params.get("service") else []
        query.append(("scope", f"repository:{self.endpoint.repository}:pull"))
        headers: dict[str, str | tuple[str, ...]] = {"User-Agent": USER_AGENT}
        if credentials is not None and credentials.identity_token:
            form = urlencode([("grant_type", "refresh_token"), ("refresh_token", credentials.identity_token),
                              ("client_id", CLIENT_ID), *query]).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
            answer = self.request("POST", realm, headers, form, read=True)
        else:
            if credentials is not None:
                query.insert(0, ("account", credentials.username))
                pair = f"{credentials.username}:{credentials.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            joined = "&".join(filter(None, (parts.query, urlencode(query))))
            answer = self.request("GET", parts._replace(query=joined).geturl(), headers, read=True)
        if answer.status != 200:
            return "", f"the token endpoint answered HTTP {answer.status}" + (
                "" if credentials is not None else " (no credentials)")
        if len(answer.body) > BODY_LIMIT:
            return "", "the token endpoint answered more than 1 MiB"
        try:
            document = json.loads(answer.body)
        except ValueError:
            return "", "the token endpoint answered no JSON"
        found = (document.get("token") or document.get("access_token")) if isinstance(document, dict) else None
        if not isinstance(found, str) or not _TOKEN68.fullmatch(found):
            return "", "the token endpoint answered no token"
        return found, ""

    def authorization(self, challenges: list[tuple[str, dict[str, str]]], scheme: str) -> tuple[str, str]:
        """The `Authorization` value the first challenge cdisk can answer asks for (setupRequestAuth), or ""
        and why none."""
        for name, params in challenges:
            if name == "basic":
                credentials = self.credentials()
                if credentials is None or not credentials.username:
                    return "", "401: the registry wants a login (Basic) and there are no credentials"
                if scheme == "http" and not self.endpoint.insecure:
                    return "", "401: Basic credentials are never sent over plain http"
                pair = f"{credentials.username}:{credentials.password}".encode()
                return "Basic " + base64.b64encode(pair).decode(), ""
            if name == "bearer":
                token, why = self.token(params, scheme)
                return ("Bearer " + token, "") if token else ("", why)
        return "", "401 with no challenge cdisk can answer" if not challenges else \
            f"401: unsupported authentication ({', '.join(name for name, _ in challenges)})"

    def digest(self, scheme: str, tag: str) -> tuple[str, str]:
        """The HEAD, authenticated if the registry asks: the digest, or "" and why not.

        Raises:
            OSError, http.client.HTTPException: the endpoint could not be reached on `scheme`.
        """
        base = f"{scheme}://{self.endpoint.host}"
        url = f"{base}/v2/{self.endpoint.repository}/manifests/{tag}"
        headers: dict[str, str | tuple[str, ...]] = {
            "Accept": ACCEPT, "Docker-Distribution-API-Version": "registry/2.0", "User-Agent": USER_AGENT}
        answer = self.request("HEAD", url, headers)
        if answer.status == 401 and urlsplit(answer.url).netloc != self.endpoint.host:
            # Redirected elsewhere: that host's challenge may name any realm; the registry's credentials are its
            # own and go to no other host.
            self.credentials = lambda: None
        if answer.status == 401:
            challenges = _challenges(answer.headers)
            if not challenges:
                challenges = _challenges(self.request("GET", f"{base}/v2/", {"User-Agent": USER_AGENT}).headers)
            authorization, why = self.authorization(challenges, scheme)
            if not authorization:
                return "", why
            answer = self.request("HEAD", url, {**headers, "Authorization": authorization})
            if answer.status == 401:
                return "", "401 after authentication" + ("" if self.credentials() else " (anonymous)")
        return _judged(answer)


def _judged(answer: _Answer) -> tuple[str, str]:
    if answer.status == 200:
        digest = str(answer.headers.get("Docker-Content-Digest") or "").strip()
        if not digest:
            return "", "200 without a Docker-Content-Digest header"
        if not SHA256_DIGEST.fullmatch(digest):
            return "", "the Docker-Content-Digest header is no sha256 digest"
        return digest, ""
    if answer.status == 404:
        return "", "404: no such repository or tag"
    if answer.status == 429:
        return "", "429: too many requests (rate limited)"
    if answer.status == 403:
        return "", "403: access denied"
    return "", f"HTTP {answer.status}"


def _cut(conn: http.client.HTTPConnection) -> None:
    """At the deadline: shut the connection's socket, so that a read waiting on it ends now."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# How a why begins where no HTTP answer came at all (the registry not reached).
UNREACHABLE = "unreachable: "


def _unreachable(error: Exception) -> str:
    """Why a connection gave no answer, in a few words (never what was sent)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or 'handshake'})"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, OSError):
        return error.strerror.lower() if error.strerror else type(error).__name__
    return f"no valid HTTP answer ({type(error).__name__})"


def endpoint_digest(endpoint: Endpoint, tag: str, credentials: Credentialed, deadline: float) -> tuple[str, str]:
    """`tag`'s digest at `endpoint`, or "" and why not: https first, plain http where the endpoint is insecure
    and https did not connect."""
    schemes = ("http",) if endpoint.plain_http else ("https", "http") if endpoint.insecure else ("https",)
    exchange = _Exchange(endpoint, credentials, deadline)
    why = ""
    for scheme in schemes:
        try:
            return exchange.digest(scheme, tag)
        except (OSError, http.client.HTTPException, ValueError) as error:
            # ValueError: http.client refusing a header value — its message could hold it: not repeated.
            if time.monotonic() >= deadline:
                return "", f"{UNREACHABLE}no answer within {TOTAL:g} s"
            why = UNREACHABLE + (_unreachable(error) if not isinstance(error, ValueError)
                                     else "a header http.client refused")
    return "", why
