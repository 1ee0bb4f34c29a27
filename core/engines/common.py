"""What podman and docker share: an image ID and a name told apart, their API's ping, whose socket may be trusted,
the overlay layer directories their inspection names, and a registry's refusal cut to its cause.
"""

from __future__ import annotations

import os
import re
import shutil
import socket as sock
from pathlib import Path
from typing import Any

_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")
# The reference grammar of docker and podman (distribution/reference): [DOMAIN/]PATH[:TAG][@DIGEST].
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
                        r"(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,})?")
# What Go's and the engines' errors wrap a registry's answer in, outermost first: the cause follows them.
_WRAPPERS = re.compile(
    r"^(?:Error(?: response from daemon)?: |(?:Error )?initializing source \S+: |pinging container registry \S+: |"
    r"Error parsing image name \"[^\"]*\": |"
    r"(?:Get|Head|Post|Put) \"[^\"]*\": |reading manifest \S+ in \S+: |copying system image from manifest list: |"
    r"choosing an image from manifest list \S+: |unable to copy from source \S+: |"
    r"(?:trying to pull|fetching) \S+: )")
REASON_LIMIT = 300


def looks_like_id(reference: str) -> bool:
    """Whether `reference` is an image ID (full or short) rather than a name."""
    return bool(_IMAGE_ID.match(reference))


def is_reference(text: str) -> bool:
    """Whether `text` can name an image in an engine's store (a name, a name with a digest, an ID): what can
    not (a leading `/` or `.`, a capital in the path, a trailing `/`) is no image name at all."""
    return looks_like_id(text) or (len(text) <= 255 and bool(_REFERENCE.fullmatch(text)))


def has_registry(reference: str) -> bool:
    """Whether `reference` names its registry (a first component with a `.` or `:`, or localhost): a short name
    is resolved by the engine's own rules (podman's aliases and search registries), which only it applies."""
    first, _, rest = reference.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def pull_reason(text: str) -> str:
    """A registry's refusal as an engine reports it, cut to its cause: the wrappers Go's errors put around it
    (`initializing source …`, `pinging container registry …`, `Get "…"`) left out, a repeated part once, on one
    line and at most REASON_LIMIT characters.
    """
    text = " ".join(text.split())
    while (wrapper := _WRAPPERS.match(text)) and wrapper.end() < len(text):
        text = text[wrapper.end():]
    parts: list[str] = []
    for part in text.split(": "):
        if not parts or part != parts[-1]:
            parts.append(part)
    text = ": ".join(parts)
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 1] + "…"


def installed(tool: str) -> bool:
    return shutil.which(tool) is not None


def answers(socket: str) -> bool:
    """Whether an engine's API answers `/_ping` on the unix socket `socket` (podman's and docker's alike).

    Asked over a bare socket: no client library is imported to learn that nobody is there.
    """
    try:
        if not Path(socket).is_socket():
            return False
        with sock.socket(sock.AF_UNIX, sock.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(socket)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            reply = conn.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


def socket_trusted(socket: str) -> bool:
    """Whether the engine behind `socket` is root's or this user's own: only such an engine's word on where its
    layers lie is taken (another user's daemon could name any directory of the host, /etc included).
    """
    try:
        return os.stat(socket).st_uid in (0, os.geteuid())
    except OSError:
        return False


def layer_dirs_of(attrs: dict[str, Any], trusted: bool) -> tuple[str, ...]:
    """The layer directories an engine's inspection names (overlay: GraphDriver's UpperDir, then LowerDir; top
    first), or none from an engine that is not `trusted`.
    """
    data = (attrs.get("GraphDriver") or {}).get("Data") or {}
    if not trusted:
        return ()
    dirs = [data["UpperDir"]] if data.get("UpperDir") else []
    return (*dirs, *(d for d in str(data.get("LowerDir") or "").split(":") if d))
