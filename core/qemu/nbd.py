"""Where an NBD server listens and how clients name it: a Unix socket (the default) or TCP (only when asked),
its URIs, and the few bytes of the protocol cdisk speaks itself — to ask whether a server is ready, and to find
who serves on a socket (`serve --stop`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket as net
import struct
from collections.abc import Iterator
from contextlib import contextmanager
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
            return f"nbd+unix:///{_quoted(export)}?socket={_quoted(self.socket)}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{_quoted(export)}"

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


def _quoted(text: str) -> str:
    """`text` percent-encoded as its bytes (a name's undecodable bytes, kept as surrogates, included)."""
    return quote(text.encode("utf-8", "surrogateescape"))


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
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_listen(text) from None
        if address.ipv4_mapped is not None:  # [::ffff:0.0.0.0] is every IPv4 interface in disguise
            raise _bad_listen(text)
    elif not _plain_host(host):
        raise _bad_listen(text)
    return Endpoint(host=host, port=int(port))


# A host name as DNS spells one (letters, digits, hyphens, dots).
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def _plain_host(host: str) -> bool:
    """Whether `host` is an IPv4 address written out (a.b.c.d) or a host name: never one of the short or hex
    forms the resolver also reads as an address (`0.0`, `0x0`, `0` all mean 0.0.0.0, every interface)."""
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    try:
        net.inet_aton(host)
        return False  # a numeric form other than a.b.c.d
    except OSError:
        # A name's last label is never all digits (RFC 3696): 1.2.3.4.5 is a mistyped address, not a name.
        return bool(_HOST_NAME.fullmatch(host)) and not host.rstrip(".").rpartition(".")[2].isdigit()


def _bad_listen(text: str) -> UsageError:
    return UsageError(f"--listen {text}: not an address to listen on; give ADDR:PORT, e.g. 127.0.0.1:10809 or "
                      "[::1]:10809")


# Clients waiting for the server to accept (they queue from the moment cdisk listens, before it serves).
_BACKLOG = 64


@contextmanager
def unix_listener(path: str, mode: int) -> Iterator[net.socket]:
    """A listening Unix socket made at `path` (with `mode`), which must not exist: binding is the check, so two
    servers cannot both take one path. It is removed at the end only if it is still the one made here.

    Raises:
        UsageError: `path` exists, or cannot be made.
    """
    sock = net.socket(net.AF_UNIX, net.SOCK_STREAM)
    try:
        # bind() makes the file with 0777 & ~umask: the umask gives it exactly `mode`, with no moment in between.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        made = os.lstat(path)
        sock.listen(_BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"{path} exists; choose another --socket, or stop what serves there (remove it if "
                             "nothing does: a killed serve leaves it)") from None
        raise UsageError(f"cannot listen on {path}: {error.strerror or error}; choose another --socket") from None
    try:
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
                os.unlink(path)


@contextmanager
def tcp_listener(endpoint: Endpoint) -> Iterator[net.socket]:
    """A listening TCP socket at `endpoint` (a name resolved here; cdisk binds, so a low port works as root).

    Raises:
        UsageError: the address cannot be resolved or bound (in use, not this host's).
    """
    assert endpoint.host is not None
    try:
        family, kind, proto, _, address = net.getaddrinfo(endpoint.host, endpoint.port, type=net.SOCK_STREAM,
                                                          flags=net.AI_PASSIVE)[0]
        sock = net.socket(family, kind, proto)
    except OSError as error:
        raise UsageError(f"--listen {endpoint.where()}: {error.strerror or error}; give an address of this host") \
            from None
    try:
        sock.setsockopt(net.SOL_SOCKET, net.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError as error:
        sock.close()
        raise UsageError(f"--listen {endpoint.where()}: {error.strerror or error}; choose another address or port") \
            from None
    with sock:
        yield sock


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


# SO_PEERPIDFD (Linux 6.5): a pidfd of the listener, immune to pid reuse; Python 3.11 has no name for it.
_SO_PEERPIDFD = 77


def listener(path: str) -> int:
    """A pidfd of the process that listens on the Unix socket `path`, told by the kernel (SO_PEERPIDFD, else
    SO_PEERCRED's pid), never by a file a server could have written.

    Raises:
        UsageError: nothing listens there, or the listener is gone or in another pid namespace.
    """
    try:
        with Endpoint(socket=os.path.abspath(path)).connect(_PROBE_SECONDS) as conn:
            try:
                return int(struct.unpack("i", conn.getsockopt(net.SOL_SOCKET, _SO_PEERPIDFD, 4))[0])
            except OSError:
                creds = conn.getsockopt(net.SOL_SOCKET, net.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as error:
        raise UsageError(f"nothing serves on {path} ({error.strerror or error}); give the socket "
                         "`cdisk serve` printed") from None
    pid = int(struct.unpack("3i", creds)[0])
    if pid <= 0:
        raise UsageError(f"the server on {path} runs in another pid namespace; stop it there")
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise UsageError(f"the server on {path} is gone; nothing to stop") from None


def pid_of(pidfd: int) -> int:
    """The pid a pidfd refers to (its fdinfo's Pid; 0 when the process has ended)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return 0
