"""Where an NBD server listens and how clients name it: a Unix socket (the default) or TCP (only when asked),
its URIs, and the few bytes of the protocol cdisk speaks itself — to ask whether a server is ready, and to find
who serves on a socket (`serve --stop`).
"""

from __future__ import annotations

import ipaddress
import os
import socket as net
import struct
from dataclasses import dataclass
from urllib.parse import quote

from cdisk.core.errors import UsageError

# The port NBD is registered for (IANA), used when --listen gives none.
DEFAULT_PORT = 10809
_GREETING = b"NBDMAGICIHAVEOPT"
_CLIENT_FLAGS = 3  # NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
_OPT_ABORT = 2
_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class Endpoint:
    """A Unix socket (`socket`), or a TCP address (`host`, `port`)."""

    socket: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT

    def uri(self, export: str) -> str:
        """The NBD URI of `export` here (the URI's path is the export name)."""
        if self.socket is not None:
            return f"nbd+unix:///{quote(export)}?socket={quote(self.socket)}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{quote(export)}"

    def where(self) -> str:
        """The endpoint as an operator names it."""
        return self.socket if self.socket is not None else f"{self.host}:{self.port}"

    def connect(self, timeout: float) -> net.socket:
        """A connected stream socket (OSError when nothing listens)."""
        if self.socket is not None:
            conn = net.socket(net.AF_UNIX, net.SOCK_STREAM)
            try:
                conn.settimeout(timeout)
                conn.connect(self.socket)
            except BaseException:
                conn.close()
                raise
            return conn
        assert self.host is not None
        return net.create_connection((self.host, self.port), timeout)


def parse_listen(text: str) -> Endpoint:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `ADDR` (port 10809) as a TCP endpoint. The address is always named: an
    empty one (every interface) is refused, so the disk reaches the network only where the operator says.

    Raises:
        UsageError: not such an address.
    """
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise _bad_listen(text)
        if rest:
            if not rest.startswith(":"):
                raise _bad_listen(text)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or host.isdigit() or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad_listen(text)
    if ":" in host or text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_listen(text) from None
    return Endpoint(host=host, port=int(port))


def _bad_listen(text: str) -> UsageError:
    return UsageError(f"--listen {text}: not an address to listen on; give ADDR:PORT, e.g. 127.0.0.1:10809 or "
                      "[::1]:10809")


def answers(endpoint: Endpoint) -> bool:
    """Whether an NBD server answers at `endpoint`: its greeting read, then left the way the protocol says
    (NBD_OPT_ABORT), so the server logs no failed client.
    """
    try:
        with endpoint.connect(_PROBE_SECONDS) as conn:
            greeting = _read(conn, 18)
            if greeting[:16] != _GREETING:
                return False
            conn.sendall(struct.pack(">I", _CLIENT_FLAGS) + b"IHAVEOPT" + struct.pack(">II", _OPT_ABORT, 0))
            _read(conn, 20)  # the server's acknowledgement; it then closes
            return True
    except OSError:
        return False


def _read(conn: net.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def listener_pid(path: str) -> int:
    """The pid (in our pid namespace) of the process that listens on the Unix socket `path`, told by the kernel
    (SO_PEERCRED), not by any file a server could have written.

    Raises:
        UsageError: nothing listens there.
    """
    try:
        with Endpoint(socket=os.path.abspath(path)).connect(_PROBE_SECONDS) as conn:
            creds = conn.getsockopt(net.SOL_SOCKET, net.SO_PEERCRED, struct.calcsize("3i"))
        pid = int(struct.unpack("3i", creds)[0])
    except OSError as error:
        raise UsageError(f"nothing serves on {path} ({error.strerror or error}); give the socket "
                         "`cdisk serve` printed") from None
    if pid <= 0:
        raise UsageError(f"the server on {path} runs in another pid namespace; stop it there")
    return pid
