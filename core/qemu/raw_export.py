"""A raw disk served read-only over NBD, its bytes handed to the socket by sendfile: no copy in the server.

qemu-storage-daemon reads each request into a buffer (one copy out of the page cache) and writes it into the
socket (a second copy); the client copies it out (a third). For a raw disk there is nothing to decode, and
Linux (6.5 on) splices a file's page-cache pages into a Unix or TCP socket without copying them: the client's
copy is then the only one, as when it reads the file itself. This is that server, and nothing more: the NBD
handshake (fixed newstyle: EXPORT_NAME, INFO, GO, LIST, ABORT; everything else unsupported) and READ; the
export is read-only, and several connections may read it at once (multi-conn) where several clients may connect.

It runs as its own program (`python -I -S raw_export.py LISTEN_FD MAX_CLIENTS MULTI_CONN NAME FILE OFFSET SIZE
...`),
standard library only, in the same sandbox as qemu-storage-daemon: the files it serves bound read-only, no
network but the listening socket it inherits. It never parses the disk; what it parses is the client's requests,
each checked against the export's bounds.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket as net
import struct
import sys
import threading
import time
from dataclasses import dataclass

_GREETING = b"NBDMAGIC" + b"IHAVEOPT"
_HANDSHAKE_FLAGS = 3  # NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
_C_NO_ZEROES = 2
_OPT_MAGIC = b"IHAVEOPT"
_REPLY_MAGIC = 0x3E889045565A9
_OPT_EXPORT_NAME, _OPT_ABORT, _OPT_LIST, _OPT_INFO, _OPT_GO = 1, 2, 3, 6, 7
_REP_ACK, _REP_SERVER, _REP_INFO = 1, 2, 3
_REP_ERR_UNSUP, _REP_ERR_INVALID, _REP_ERR_UNKNOWN = (1 << 31) + 1, (1 << 31) + 3, (1 << 31) + 6
_INFO_EXPORT, _INFO_BLOCK_SIZE = 0, 3
# NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY; and NBD_FLAG_CAN_MULTI_CONN where more than one client may connect
# (reads on one connection see what every other sees: nothing writes), as qemu's server offers it: a client that
# opened a second connection to a server of one client would wait for ever to be accepted.
_READ_ONLY_FLAGS = 1 | 2
_MULTI_CONN = 1 << 8
_REQUEST_MAGIC, _SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
_CMD_READ, _CMD_WRITE, _CMD_DISC = 0, 1, 2
_EPERM, _EINVAL = 1, 22
# The largest request served, as qemu's server (its clients never ask more); a larger one is refused.
MAX_REQUEST = 32 << 20
# An option's data is an export name and a few info requests: anything longer is not a client of this server.
_MAX_OPTION = 4096 + 8
# A client that has not finished the handshake by then is dropped, as by qemu's server (its slot freed).
_HANDSHAKE_SECONDS = 10.0
# Clients waiting to be accepted, as cdisk's listener has it.
_BACKLOG = 64
# Replies leave in large pieces: a send buffer of 4 MiB (the kernel caps it at net.core.wmem_max) lets one
# sendfile move a whole 2 MiB read where the default (208 KiB) wakes the client a dozen times.
_SEND_BUFFER = 4 << 20


@dataclass(frozen=True)
class Export:
    """One disk: its export name, and `size` bytes at `offset` in the open file `fd`."""

    name: bytes
    fd: int
    offset: int
    size: int
    flags: int = _READ_ONLY_FLAGS


class _Gone(Exception):
    """The client closed the connection, or broke the protocol: drop it."""


def _recv(conn: net.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise _Gone
        data += chunk
    return bytes(data)


def _reply(conn: net.socket, option: int, kind: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", _REPLY_MAGIC, option, kind, len(data)) + data)


def _handshake(conn: net.socket, exports: dict[bytes, Export]) -> Export | None:
    """The option haggling; the export the client chose (None: it left, as ABORT says)."""
    conn.sendall(_GREETING + struct.pack(">H", _HANDSHAKE_FLAGS))
    (client_flags,) = struct.unpack(">I", _recv(conn, 4))
    if client_flags & ~3:
        raise _Gone
    while True:
        magic, option, length = struct.unpack(">8sII", _recv(conn, 16))
        if magic != _OPT_MAGIC or length > _MAX_OPTION:
            raise _Gone
        data = _recv(conn, length)
        if option == _OPT_EXPORT_NAME:
            export = exports.get(data)
            if export is None:
                raise _Gone  # this option has no error reply: the protocol says close
            conn.sendall(struct.pack(">QH", export.size, export.flags)
                         + (b"" if client_flags & _C_NO_ZEROES else bytes(124)))
            return export
        if option == _OPT_ABORT:
            _reply(conn, option, _REP_ACK)
            return None
        if option == _OPT_LIST:
            if data:
                _reply(conn, option, _REP_ERR_INVALID)
                continue
            for name in exports:
                _reply(conn, option, _REP_SERVER, struct.pack(">I", len(name)) + name)
            _reply(conn, option, _REP_ACK)
            continue
        if option in (_OPT_INFO, _OPT_GO):
            chosen = _chosen(data, exports)
            if isinstance(chosen, int):
                _reply(conn, option, chosen)
                continue
            export, asked = chosen
            _reply(conn, option, _REP_INFO, struct.pack(">HQH", _INFO_EXPORT, export.size, export.flags))
            if _INFO_BLOCK_SIZE in asked:
                _reply(conn, option, _REP_INFO, struct.pack(">HIII", _INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
            _reply(conn, option, _REP_ACK)
            if option == _OPT_GO:
                return export
            continue
        _reply(conn, option, _REP_ERR_UNSUP)  # structured replies, meta contexts, TLS, ...


def _chosen(data: bytes, exports: dict[bytes, Export]) -> tuple[Export, set[int]] | int:
    """The export an INFO or GO names and the information items it asks for, or the error to reply."""
    if len(data) < 6:
        return _REP_ERR_INVALID
    (name_length,) = struct.unpack(">I", data[:4])
    if len(data) < 4 + name_length + 2:
        return _REP_ERR_INVALID
    name = data[4:4 + name_length]
    (count,) = struct.unpack(">H", data[4 + name_length:6 + name_length])
    items = data[6 + name_length:]
    if len(items) != 2 * count:
        return _REP_ERR_INVALID
    export = exports.get(name)
    if export is None:
        return _REP_ERR_UNKNOWN
    return export, set(struct.unpack(f">{count}H", items))


def _transmit(conn: net.socket, export: Export) -> None:
    """Answer requests until the client disconnects: a READ by sendfile from the file, anything else refused."""
    while True:
        magic, _, kind, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
        if magic != _REQUEST_MAGIC:
            raise _Gone
        if kind == _CMD_DISC:
            return
        if kind == _CMD_WRITE:
            if length > MAX_REQUEST:
                raise _Gone
            _recv(conn, length)  # its payload, to stay in step with the client
            conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, _EPERM, handle))
            continue
        if kind != _CMD_READ or length > MAX_REQUEST or offset + length > export.size:
            conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, _EINVAL, handle))
            continue
        conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, 0, handle))
        sent = 0
        while sent < length:
            done = os.sendfile(conn.fileno(), export.fd, export.offset + offset + sent, length - sent)
            if done == 0:  # past the file's end (its last partial sector): zeros, as qemu reads it
                conn.sendall(bytes(length - sent))
                break
            sent += done


def _client(conn: net.socket, exports: dict[bytes, Export], slots: threading.BoundedSemaphore) -> None:
    try:
        with conn:
            conn.setsockopt(net.SOL_SOCKET, net.SO_SNDBUF, _SEND_BUFFER)
            conn.settimeout(_HANDSHAKE_SECONDS)
            export = _handshake(conn, exports)
            if export is not None:
                conn.settimeout(None)
                _transmit(conn, export)
    except (_Gone, OSError):
        pass
    finally:
        slots.release()


def serve(listener: net.socket, exports: list[Export], clients: int, multi_conn: bool = False) -> None:
    """Accept clients on `listener` for ever, at most `clients` at once (the others wait to be accepted); with
    `multi_conn`, each export tells a client it may read over several connections."""
    flags = _READ_ONLY_FLAGS | (_MULTI_CONN if multi_conn else 0)
    by_name = {export.name: dataclasses.replace(export, flags=flags) for export in exports}
    slots = threading.BoundedSemaphore(clients)
    # listen() again, as qemu's servers do with a socket they are handed: the socket's credentials
    # (SO_PEERCRED, SO_PEERPIDFD) then name this server, which is how `serve --stop` finds it.
    listener.listen(_BACKLOG)
    while True:
        slots.acquire()
        try:
            conn, _ = listener.accept()
        except OSError as error:
            slots.release()
            if error.errno in (errno.EBADF, errno.EINVAL):
                return  # the listener is closed
            time.sleep(0.01)  # out of descriptors, or a client gone before it was accepted: again
            continue
        threading.Thread(target=_client, args=(conn, by_name, slots), daemon=True).start()


def main(argv: list[str]) -> None:
    """LISTEN_FD MAX_CLIENTS MULTI_CONN (0 or 1), then NAME FILE OFFSET SIZE for each export (SIZE -1: to the
    file's end)."""
    listen_fd, clients, multi_conn, rest = int(argv[0]), int(argv[1]), argv[2] == "1", argv[3:]
    exports = []
    for index in range(0, len(rest), 4):
        name, filename, offset, size = rest[index:index + 4]
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
        length = int(size) if int(size) >= 0 else os.fstat(fd).st_size - int(offset)
        exports.append(Export(os.fsencode(name), fd, int(offset), length))
    serve(net.socket(fileno=listen_fd), exports, clients, multi_conn)


if __name__ == "__main__":
    main(sys.argv[1:])
