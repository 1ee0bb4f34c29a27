"""What podman and docker share: an image ID told from a name, their API's ping, whose socket may be trusted,
and the overlay layer directories their inspection names.
"""

from __future__ import annotations

import os
import re
import shutil
import socket as sock
from pathlib import Path
from typing import Any

_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


def looks_like_id(reference: str) -> bool:
    """Whether `reference` is an image ID (full or short) rather than a name."""
    return bool(_IMAGE_ID.match(reference))


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
