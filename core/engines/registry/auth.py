"""Credentials for a registry, where the engine finds them; None (anonymous) whenever they cannot be had.

podman: containers/image pkg/docker/config/config.go — the auth files in order (`REGISTRY_AUTH_FILE`; the
runtime dir's `containers/auth.json`; `containers/auth.json` in the config home; docker's `config.json`),
each by `credHelpers[host]` first, then `auths` keyed by the repository and each parent, then by the
normalised host (docker's `https://index.docker.io/v1/` is docker.io); the first file that has some wins.
docker: the CLI's `config.json` (`DOCKER_CONFIG`, else ~/.docker), keyed by host only, `credHelpers[host]` then
`credsStore` (docker/cli cli/config/configfile/file.go).

A file that is unreadable, too large or not JSON, and a helper that is missing, fails or talks nonsense, are
simply no credentials. Nothing here prints, logs or returns a secret in a message.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdisk.core.engines.registry.config import home, read_small_file
from cdisk.core.engines.registry.reference import DOCKER_HUB

# An auth file is a few KiB; beyond this it is not read.
FILE_LIMIT = 1 << 20
HELPER_SECONDS = 10.0
HELPER_LIMIT = 64 << 10
# Docker Hub's key in docker's config.json (docker/cli, moby registry/config.go IndexServer).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class Credentials:
    """A user and password, or an identity token (OAuth2 refresh token) for the token endpoint."""

    username: str
    password: str = field(repr=False)
    identity_token: str = field(default="", repr=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    data = read_small_file(path, FILE_LIMIT)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _decode(entry: Any) -> Credentials | None:
    """An `auths` entry (decodeDockerAuth): base64 `user:password`, or an identity token; {} is none."""
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken") or ""
    encoded = entry.get("auth") or ""
    user = password = ""
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not sep:
            return None
        password = password.strip("\x00")
    if isinstance(token, str) and token:
        return Credentials(user, "", token)
    return Credentials(user, password) if user or password else None


def helper_credentials(helper: str, server: str) -> Credentials | None:
    """`docker-credential-HELPER get` with `server` on stdin: its Username and Secret, or None (missing, failed,
    "credentials not found", over its bounds). `<token>` as Username makes Secret an identity token."""
    import shutil

    from cdisk.core import processes
    from cdisk.core.errors import ToolError

    if not helper or "/" in helper or helper.startswith("."):
        return None
    found = shutil.which(f"docker-credential-{helper}")
    if found is None:
        return None
    from plumbum import local

    asked = server.encode()
    if len(asked) > 4096:
        return None  # no host's name: and what goes on stdin must fit a pipe's buffer, written before the helper runs
    read, write = os.pipe()
    try:
        try:
            os.write(write, asked)
        finally:
            os.close(write)
        code, out, _ = processes.run(local[found], ["get"], timeout=HELPER_SECONDS, stdout_limit=HELPER_LIMIT,
                                     stdin=read)
    except (ToolError, OSError):  # over its bounds, or not to be run
        return None
    finally:
        os.close(read)
    if code != 0:
        return None
    try:
        answer = json.loads(out)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    user, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":
        return Credentials("", "", secret)
    return Credentials(user, secret)


# --- podman ---------------------------------------------------------------------------------------------


def podman_auth_files() -> list[Path]:
    """The files podman reads credentials from, in order (getAuthFilePaths, podman 4.3's: an explicit file
    first, then the defaults)."""
    files = []
    if explicit := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(explicit))
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers/auth.json")
    else:
        files.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home() / ".config")
    files.append(config_home / "containers/auth.json")
    files.append(_docker_config_file())
    return list(dict.fromkeys(files))


def _docker_config_file() -> Path:
    """docker's config.json: in $DOCKER_CONFIG, else ~/.docker."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else home() / ".docker/config.json"


def _normalised_key(key: str) -> str:
    """An auths key as a host (normalizeAuthFileKey): scheme and path stripped, Docker Hub's names as one."""
    host = key.removeprefix("http://").removeprefix("https://").split("/", 1)[0]
    return "index.docker.io" if host in ("docker.io", "registry-1.docker.io", "index.docker.io") else host


def _keys(name: str) -> list[str]:
    """`quay.io/ns/img`, `quay.io/ns`, `quay.io` (authKeyLookupOrder)."""
    parts = name.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _in_file(document: dict[str, Any], registry: str, name: str) -> Credentials | None:
    helpers = document.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(registry), str):
        return helper_credentials(helpers[registry], registry)
    auths = document.get("auths")
    if not isinstance(auths, dict):
        return None
    for key in _keys(name):
        if key in auths and (found := _decode(auths[key])) is not None:
            return found
    wanted = _normalised_key(registry)
    for key, entry in auths.items():
        if isinstance(key, str) and _normalised_key(key) == wanted and (found := _decode(entry)) is not None:
            return found
    return None


def podman_credentials(registry: str, name: str, helpers: tuple[str, ...] = ("containers-auth.json",),
                       ) -> Credentials | None:
    """podman's credentials for the repository `name` (`registry/path`) of `registry`: registries.conf's
    `credential-helpers` in order, `containers-auth.json` being the auth files."""
    for helper in helpers:
        if helper == "containers-auth.json":
            for path in podman_auth_files():
                document = _read_json(path)
                if document is not None and (found := _in_file(document, registry, name)) is not None:
                    return found
        elif (found := helper_credentials(helper, registry)) is not None:
            return found
    return None


# --- docker ---------------------------------------------------------------------------------------------


def docker_credentials(registry: str) -> Credentials | None:
    """docker's credentials for `registry` (the CLI's; dockerd reads no file): by host, Docker Hub under its
    index URL; `credHelpers[host]`, else `credsStore`, else the file's own entry."""
    document = _read_json(_docker_config_file())
    if document is None:
        return None
    key = DOCKER_HUB_KEY if registry == DOCKER_HUB else registry
    helpers = document.get("credHelpers")
    helper = helpers.get(registry) if isinstance(helpers, dict) else None
    if not isinstance(helper, str) or not helper:
        store = document.get("credsStore")
        helper = store if isinstance(store, str) and store else None
    if helper:
        return helper_credentials(helper, key)
    auths = document.get("auths")
    if not isinstance(auths, dict):
        return None
    if key in auths:
        return _decode(auths[key])
    wanted = _normalised_key(key)
    for entry_key, entry in auths.items():
        if isinstance(entry_key, str) and _normalised_key(entry_key) == wanted:
            return _decode(entry)
    return None
