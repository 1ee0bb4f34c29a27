"""A registry asked for a tag's digest with one HEAD, as the engine in use would ask it (its mirrors, insecure
registries and credentials), so that an unchanged image costs the registry no pull.

`head_digest()` is the one entry point. `reference` splits a reference; `config` finds the endpoints (podman's
registries.conf, docker's daemon settings); `auth` the credentials; `head` does the HTTP exchange. Only the
standard library: `http.client`, `ssl` and `tomllib` are imported when a registry is first asked.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cdisk.core.engines.common import has_registry
from cdisk.core.engines.registry.reference import parse_reference

if TYPE_CHECKING:
    from cdisk.core.engines.registry.auth import Credentials


@dataclass(frozen=True)
class Answer:
    """What the registry said: `digest` ("" when no endpoint gave one, `why` then says why in one line with no
    secret in it) and `endpoint`, the host[:port] that answered (a mirror or the registry itself; "" when the
    reference carried its digest and nothing was asked)."""

    digest: str
    endpoint: str
    why: str
    # Whether some registry answered (an HTTP status), as against none reached at all: a registry that answered
    # without a digest (401, 404, blocked, ...) is for the engine's own pull to judge.
    reached: bool = field(default=False, compare=False)


def head_digest(reference: str, engine: str, tls_verify: bool | None = None) -> Answer:
    """The digest `reference`'s tag points at now, asked of the endpoints `engine` ("podman" or "docker")
    would pull from, in its order; the first digest wins. `tls_verify`: None, as the engine's configuration
    says; False, unverified TLS and plain http allowed; True, verified TLS everywhere.

    A reference with `@digest` is that digest, nothing asked. Never raises for what a registry, a
    configuration or the network does: `Answer.why` says it.

    Raises:
        ValueError: `engine` is neither podman nor docker.
    """
    if engine not in ("podman", "docker"):
        raise ValueError(f"engine {engine!r}: podman or docker")
    try:
        return _asked(reference, engine, tls_verify)
    except Exception as error:  # a hostile answer or file: JSON or TOML nested past the stack, a v1 table, …
        return Answer("", "", f"could not read the registry's answer or a configuration file "
                              f"({type(error).__name__})", reached=True)


def _asked(reference: str, engine: str, tls_verify: bool | None) -> Answer:
    from cdisk.core.engines.registry import auth, config, head

    try:
        ref = parse_reference(reference)
    except ValueError as error:
        return Answer("", "", str(error), reached=True)
    if ref.digest:
        return Answer(ref.digest, "", "")
    if engine == "podman" and not has_registry(reference):
        return Answer("", "", f"{reference} names no registry; podman would resolve it as a short name", reached=True)
    plan = config.podman_plan(ref, tls_verify) if engine == "podman" else config.docker_plan(ref, tls_verify)
    if not plan.endpoints:
        return Answer("", "", plan.why, reached=True)  # blocked, or a configuration that says no endpoint
    deadline = time.monotonic() + head.TOTAL
    failed: list[tuple[str, str]] = []
    # docker logs in to the registry named, whichever endpoint answers: one lookup (a helper run) for them all.
    docker_login = _once(lambda: auth.docker_credentials(ref.registry))
    for endpoint in plan.endpoints:
        find = docker_login if engine == "docker" else \
            _once(functools.partial(auth.podman_credentials, endpoint.registry, endpoint.name, plan.helpers))
        digest, why = head.endpoint_digest(endpoint, ref.tag, find, deadline)
        if digest:
            return Answer(digest, endpoint.host, "")
        failed.append((endpoint.host, why))
    primary_host, primary_why = failed[-1]
    mirrors = "; ".join(f"{host}: {why}" for host, why in failed[:-1])
    reached = any(not why.startswith(head.UNREACHABLE) for _, why in failed)
    return Answer("", "", f"{primary_host}: {primary_why}" + (f" (mirrors also failed: {mirrors})" if mirrors else ""),
                  reached)


def _once(find: Callable[[], Credentials | None]) -> Callable[[], Credentials | None]:
    """`find` asked at most once: a credential helper runs once per endpoint, and only if a registry asks."""
    found: list[Credentials | None] = []

    def cached() -> Credentials | None:
        if not found:
            found.append(find())
        return found[0]

    return cached
