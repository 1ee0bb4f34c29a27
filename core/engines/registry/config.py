"""Where an engine would ask a registry for a tag: the endpoints in order (mirrors, then the registry itself),
each with its repository path and whether it is insecure (TLS unverified, plain http allowed).

podman: registries.conf v2 as containers/image reads it (pkg/sysregistriesv2/system_registries_v2.go). docker:
the live daemon's registry settings (`docker info`), whose mirrors serve Docker Hub only and whose insecure
registries are named or fall in `InsecureRegistryCIDRs` (moby registry/service_v2.go, registry/config.go).

Nothing here raises for a configuration: one that cannot be read is the defaults (no mirrors, secure), one
that is malformed gives a `Plan` with no endpoints and `why` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdisk.core.engines.registry.reference import DOCKER_HUB, Reference, parse_reference

# containers/image's system files (pkg/sysregistriesv2/paths_common.go); tests point these elsewhere.
SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
SYSTEM_REGISTRIES_DIR = Path("/etc/containers/registries.conf.d")
# Where a registry's own CA certificates are looked for, first existing directory wins (docker_client.go
# dockerCertDir); the user's comes first.
SYSTEM_CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
DOCKER_CERT_DIR = Path("/etc/docker/certs.d")
# What registries.conf may hold: beyond this it is not a configuration.
CONF_LIMIT = 1 << 20
AUTH_FILES = "containers-auth.json"


@dataclass(frozen=True)
class Endpoint:
    """One place to ask: `registry` as named (whose certs.d directory and credentials apply), `host` the
    host[:port] the request goes to, `repository` the path there, `insecure`: TLS unverified and http allowed.
    `name` is the endpoint's repository name (`registry/repository`) whose credentials podman looks up."""

    registry: str
    host: str
    repository: str
    insecure: bool
    mirror: bool = False
    plain_http: bool = False  # a docker mirror named by an http:// URL: never https
    cert_dirs: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"


@dataclass(frozen=True)
class Plan:
    """The endpoints to ask in order, the first digest winning; none, and `why`, when the engine would not ask
    (a blocked registry, a malformed registries.conf). `helpers`: registries.conf `credential-helpers`."""

    endpoints: tuple[Endpoint, ...]
    why: str = ""
    helpers: tuple[str, ...] = (AUTH_FILES,)


# --- podman: registries.conf -----------------------------------------------------------------------------


@dataclass
class _Registry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: list[tuple[str, bool, str]] = field(default_factory=list)  # (location, insecure, pull-from-mirror)


@dataclass
class _Conf:
    registries: dict[str, _Registry] = field(default_factory=dict)  # by prefix
    helpers: list[str] | None = None


def home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _conf_files() -> tuple[Path, list[Path]]:
    """registries.conf and its drop-ins, in the order containers/image reads them (newConfigWrapperWithHomeDir,
    dropInConfigs)."""
    user_file = home() / ".config/containers/registries.conf"
    user_dir = home() / ".config/containers/registries.conf.d"
    explicit = os.environ.get("CONTAINERS_REGISTRIES_CONF") or os.environ.get("REGISTRIES_CONFIG_PATH")
    if explicit:
        main, dirs = Path(explicit), [SYSTEM_REGISTRIES_DIR, user_dir]
    elif user_file.exists():
        main, dirs = user_file, [user_dir]  # the user's file: the system's drop-ins are not read
    else:
        main, dirs = SYSTEM_REGISTRIES_CONF, [SYSTEM_REGISTRIES_DIR, user_dir]
    drop_ins = []
    for directory in dirs:
        with contextlib.suppress(OSError):
            drop_ins += sorted(p for p in directory.iterdir() if p.name.endswith(".conf") and not p.is_dir())
    return main, drop_ins


def read_small_file(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes, or None: missing, unreadable, not a regular file (a FIFO is never waited on),
    or larger than `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > limit else data
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_toml(path: Path) -> dict[str, Any] | None:
    """The file's TOML, or None when it cannot be read (missing, unreadable, too large: the defaults).

    Raises:
        ValueError: the file is not valid TOML.
    """
    import tomllib

    data = read_small_file(path, CONF_LIMIT)
    if data is None:
        return None
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"not valid TOML ({error})") from None


def _shown(location: str) -> str:
    """`location` fit for a warning: whatever stands before its last `@` (a user and password, with or without a
    scheme, whatever characters the password holds) shown as `***@`, as docker redacts a mirror's URI. An `@`
    that begins a digest (`@sha256:…`) is not a user's."""
    scheme = _SCHEME.match(location)
    head, rest = (scheme[0], location[scheme.end():]) if scheme else ("", location)
    ats = [found.start() for found in re.finditer("@", rest) if not _DIGEST.match(rest, found.end())]
    if ats:
        rest = "***" + rest[ats[-1]:]
    return repr(head + rest)


# A URI's scheme (RFC 3986) and the algorithm of a digest (OCI image spec): what `_shown` keeps in sight.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")


def _location(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise ValueError(f"invalid location {_shown(value)}: URI schemes are not supported")
    return trimmed


def _flag(table: dict[str, Any], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} is not a boolean")
    return value


def _parse_conf(document: dict[str, Any], drop_in: bool) -> _Conf:
    """One file's registries, checked as postProcessRegistries checks them.

    Raises:
        ValueError: what containers/image would refuse.
    """
    conf = _Conf()
    v1 = document.get("registries")
    if isinstance(v1, dict):
        if drop_in:
            raise ValueError("registry must be in v2 format but is in v1")
        if document.get("registry"):
            raise ValueError("mixing sysregistry v1/v2 is not supported")
        for key, blocked in (("block", True), ("insecure", False)):
            for location in (v1.get(key) or {}).get("registries") or []:
                loc = _location(location, f"registries.{key}")
                reg = conf.registries.setdefault(loc, _Registry(loc, loc))
                reg.blocked |= blocked
                reg.insecure |= not blocked
        return conf
    helpers = document.get("credential-helpers")
    if helpers is not None:
        if not isinstance(helpers, list) or not all(isinstance(h, str) for h in helpers):
            raise ValueError("credential-helpers is not a list of names")
        conf.helpers = helpers
    tables = document.get("registry") or []
    if not isinstance(tables, list):
        raise ValueError("[[registry]] is not an array of tables")
    for table in tables:
        if not isinstance(table, dict):
            raise ValueError("[[registry]] is not a table")
        location = _location(table.get("location", ""), "location")
        prefix = table.get("prefix", "")
        if not prefix:
            if not location:
                raise ValueError("invalid condition: both location and prefix are unset")
            prefix = location
        else:
            prefix = _location(prefix, "prefix")
            if not prefix.startswith("*.") and not location:
                raise ValueError("invalid condition: location is unset and prefix is not in the format: "
                                 "*.example.com")
        if prefix.startswith("*.") and any(c in prefix for c in "/@:"):
            raise ValueError(f"wildcarded prefix should be in the format: *.example.com, not {_shown(prefix)}")
        if table.get("pull-from-mirror"):
            raise ValueError(f"pull-from-mirror must not be set for a non-mirror registry {_shown(prefix)}")
        reg = _Registry(prefix, location, _flag(table, "insecure"), _flag(table, "blocked"),
                        _flag(table, "mirror-by-digest-only"))
        for mirror in table.get("mirror") or []:
            if not isinstance(mirror, dict):
                raise ValueError("[[registry.mirror]] is not a table")
            where = _location(mirror.get("location", ""), "mirror location")
            if not where:
                raise ValueError("invalid condition: mirror location is unset")
            usage = mirror.get("pull-from-mirror", "")
            if reg.mirror_by_digest_only and usage:
                raise ValueError(f"cannot set mirror-by-digest-only for {_shown(prefix)} and pull-from-mirror for "
                                 f"{_shown(where)} at the same time")
            if usage not in ("", "all", "digest-only", "tag-only"):
                raise ValueError(f"unsupported pull-from-mirror value {usage!r} for mirror {_shown(where)}")
            reg.mirrors.append((where, _flag(mirror, "insecure"), usage))
        conf.registries[prefix] = reg  # a later table of the same prefix wins, as in a drop-in
    return conf


def _load_conf() -> _Conf | str:
    """The merged registries.conf, or one line naming the file c/image would refuse and why."""
    main, drop_ins = _conf_files()
    merged = _Conf()
    for path in (main, *drop_ins):
        try:
            document = _read_toml(path)
            if document is None:
                continue
            conf = _parse_conf(document, drop_in=path is not main)
        except ValueError as error:
            return f"registries.conf {path}: {error}"
        if path is main:
            merged = conf
            continue
        # updateWithConfigurationFrom: same prefix replaced whole, then sorted by prefix.
        registries = {**merged.registries, **conf.registries}
        merged.registries = {prefix: registries[prefix] for prefix in sorted(registries)}
        if conf.helpers is not None:
            merged.helpers = conf.helpers
    return merged


def matching_prefix(ref: str, prefix: str) -> int:
    """How much of `ref` `prefix` matches (-1: none), as refMatchingPrefix: whole, or up to a `:`, `/` or `@`;
    `*.example.com` matches any subdomain of example.com in the host part."""
    if prefix.startswith("*."):
        index = ref.find(prefix[1:])
        if index == -1 or "/" in ref[:index]:
            return -1
        index += len(prefix) - 1
        return index if index == len(ref) or ref[index] in ":/@" else -1
    if len(ref) < len(prefix) or not ref.startswith(prefix):
        return -1
    return len(prefix) if len(ref) == len(prefix) or ref[len(prefix)] in ":/@" else -1


def _find(conf: _Conf, name: str) -> _Registry | None:
    """The [[registry]] of the longest prefix matching the repository `name` (FindRegistry)."""
    best, length = None, 0
    for reg in conf.registries.values():
        matched = matching_prefix(name, reg.prefix)
        if matched > length:
            best, length = reg, matched
    return best


def _cert_dirs(registry: str) -> tuple[Path, ...]:
    for base in (home() / ".config/containers/certs.d", *SYSTEM_CERT_DIRS):
        if (base / registry).is_dir():
            return (base / registry,)
    return ()


def podman_plan(ref: Reference, tls_verify: bool | None) -> Plan:
    """Where podman pulls `ref`'s tag from: mirrors in file order (those a tag may use), then the registry
    itself, each reference rewritten as `location` + what follows the prefix (PullSourcesFromReference)."""
    conf = _load_conf()
    if isinstance(conf, str):
        return Plan((), conf)
    helpers = tuple(conf.helpers) if conf.helpers else (AUTH_FILES,)
    reg = _find(conf, ref.name)
    if reg is None:
        sources: list[tuple[str, bool, bool]] = [(ref.text, False, False)]
        prefix = ref.text
    else:
        prefix = reg.prefix
        sources = []
        if not reg.mirror_by_digest_only:
            sources += [(location, insecure, True) for location, insecure, usage in reg.mirrors
                        if usage != "digest-only"]
        sources.append((reg.location, reg.insecure, False))
    endpoints, blocked = [], []
    for location, insecure, mirror in sources:
        matched = matching_prefix(ref.text, prefix)
        try:
            physical = ref if reg is None or (not location and prefix.startswith("*.")) \
                else parse_reference(location + ref.text[matched:])
        except ValueError:
            continue  # c/image fails on a rewrite that is no reference; the next endpoint may do
        # Each endpoint's own [[registry]] may block it (newDockerClient); its `insecure` is the mirror's own.
        own = _find(conf, physical.name)
        if own is not None and own.blocked:
            blocked.append(own.prefix)
            continue
        endpoints.append(Endpoint(physical.registry, physical.api_host, physical.repository,
                                  insecure if tls_verify is None else not tls_verify, mirror,
                                  cert_dirs=_cert_dirs(physical.registry)))
    if not endpoints:
        why = (f"registry {blocked[0]} is blocked in registries.conf" if blocked else
               f"registries.conf rewrites {ref.registry} to no valid reference")  # as c/image, which fails the pull
        return Plan((), why, helpers)
    return Plan(tuple(endpoints), "", helpers)


# --- docker: the daemon's RegistryConfig ------------------------------------------------------------------


def docker_registry_config(socket: str) -> dict[str, Any]:
    """The daemon's `RegistryConfig` (`docker.registry_config`, asked once per run and socket: docker.py is the
    one module that runs docker); {} when docker does not answer (the defaults)."""
    from cdisk.core.engines.docker import registry_config

    return registry_config(socket)


def _docker_mirror(url: Any, ref: Reference, config: dict[str, Any], tls_verify: bool | None) -> Endpoint | None:
    from urllib.parse import urlsplit

    from cdisk.core.engines.docker import insecure_registry

    if not isinstance(url, str):
        return None
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None  # docker refuses a mirror with a user and password in it (ValidateMirror)
    host = parts.netloc
    insecure = insecure_registry(config, host) if tls_verify is None else not tls_verify
    return Endpoint(host, host, ref.repository, insecure, mirror=True, plain_http=parts.scheme == "http",
                    cert_dirs=(DOCKER_CERT_DIR / host,) if (DOCKER_CERT_DIR / host).is_dir() else ())


def docker_plan(ref: Reference, tls_verify: bool | None) -> Plan:
    """Where dockerd pulls `ref`'s tag from: for Docker Hub its mirrors, then Docker Hub; any other registry
    alone, insecure as the daemon says (lookupV2Endpoints)."""
    from cdisk.core.engines.docker import default_socket, insecure_registry
    from cdisk.core.errors import ImageError

    try:
        config = docker_registry_config(default_socket())
    except ImageError:  # DOCKER_HOST elsewhere than a local socket: the daemon's defaults
        config = {}
    endpoints = []
    if ref.registry == DOCKER_HUB:
        for url in config.get("Mirrors") or []:
            if (mirror := _docker_mirror(url, ref, config, tls_verify)) is not None:
                endpoints.append(mirror)
        insecure = False if tls_verify is None else not tls_verify
    else:
        insecure = insecure_registry(config, ref.registry) if tls_verify is None else not tls_verify
    certs = DOCKER_CERT_DIR / ref.registry
    endpoints.append(Endpoint(ref.registry, ref.api_host, ref.repository, insecure,
                              cert_dirs=(certs,) if certs.is_dir() else ()))
    return Plan(tuple(endpoints))
