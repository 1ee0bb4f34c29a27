"""An image reference split as the registry API needs it: the registry host, the repository path, the tag or
digest. Docker Hub's names are normalised as distribution's `reference` package normalises them: `docker.io`
(or `index.docker.io`) is the registry, a one-component name gets `library/`, and the API is asked at
`registry-1.docker.io`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdisk.core.engines.common import has_registry

DOCKER_HUB = "docker.io"
# Where Docker Hub's registry API answers (c/image docker/docker_client.go, moby registry/config.go).
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

# distribution/reference's grammar (regexp.go), anchored: a lowercase path component, a host, a tag, a digest.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
# Only sha256 digests are taken from a registry's answer: what every engine writes and compares.
SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference: `registry` as named (`docker.io`, `localhost:5000`), `repository` the
    path inside it (`library/alpine`), and either `tag` or `digest` (the other "")."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository's full name, as containers/image's `ref.Name()`: `docker.io/library/alpine`."""
        return f"{self.registry}/{self.repository}"

    @property
    def text(self) -> str:
        """The whole reference, as containers/image's `ref.String()`: `docker.io/library/alpine:3`."""
        return self.name + (f"@{self.digest}" if self.digest else f":{self.tag}")

    @property
    def api_host(self) -> str:
        """The host[:port] the registry API is asked at (Docker Hub's is not `docker.io`)."""
        return api_host(self.registry)


def api_host(registry: str) -> str:
    """The host[:port] where `registry`'s API answers."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def parse_reference(reference: str) -> Reference:
    """`reference` split into registry, repository and tag or digest; no tag and no digest means `latest`.
    A name without a registry is Docker Hub's, as docker reads it.

    Raises:
        ValueError: `reference` is not a valid image reference (the message names it).
    """
    rest, at, digest = reference.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError(f"{reference!r} has no valid digest after '@'")
    tag = ""
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ValueError(f"{reference!r} has no valid tag")
    if has_registry(rest):
        registry, path = rest.split("/", 1)
    else:
        registry, path = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if not _HOST.fullmatch(registry) or not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise ValueError(f"{reference!r} is not a valid image reference")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(registry) + 1 + len(path) > 255:
        raise ValueError(f"{reference!r}: the name is longer than 255 characters")
    return Reference(registry, path, "" if at else (tag or DEFAULT_TAG), digest if at else "")
