"""A disk served read-only over NBD, its bytes handed to the socket by sendfile: no copy in the server.

qemu-storage-daemon reads each request into a buffer (one copy out of the page cache) and writes it into the
socket (a second copy); the client copies it out (a third). Where the disk is pieces of a file — a raw disk, or
a qcow2 whose every cluster lies whole in the file, as `qemu-img map` maps it — there is nothing left to decode,
and Linux (6.5 on) splices a file's page-cache pages into a Unix or TCP socket without copying them: the client's
copy is then the only one, as when it reads the file itself. This is that server, and nothing more: the NBD
handshake (fixed newstyle: EXPORT_NAME, INFO, GO, LIST, ABORT, structured replies, the base:allocation context;
everything else unsupported), READ, and BLOCK_STATUS (a qcow2's unallocated clusters as holes; a raw disk's
runs of zeros, found by reading it once, as allocated zeros: either way a client skips them). The export is
read-only, and several connections may read it at once (multi-conn) where several clients may connect.

It runs as its own program (`python -I -S raw_export.py LISTEN_FD MAX_CLIENTS MULTI_CONN EXPORTS_FD`),
standard library only, in the same sandbox as qemu-storage-daemon: the files it serves bound read-only, no
network but the listening socket it inherits. It never parses the disk (the map comes from qemu-img; a raw
disk's bytes are read only to be compared with zeros); what it parses is the client's requests, each checked
against the export's bounds.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import heapq
import json
import os
import socket as net
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

_GREETING = b"NBDMAGIC" + b"IHAVEOPT"
_HANDSHAKE_FLAGS = 3  # NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
_C_NO_ZEROES = 2
_OPT_MAGIC = b"IHAVEOPT"
_REPLY_MAGIC = 0x3E889045565A9
_OPT_EXPORT_NAME, _OPT_ABORT, _OPT_LIST, _OPT_INFO, _OPT_GO = 1, 2, 3, 6, 7
_OPT_STRUCTURED_REPLY, _OPT_LIST_META_CONTEXT, _OPT_SET_META_CONTEXT = 8, 9, 10
_REP_ACK, _REP_SERVER, _REP_INFO, _REP_META_CONTEXT = 1, 2, 3, 4
# The one metadata context: which extents are data and which read as zeros, so that a client skips the zeros.
_BASE_ALLOCATION = b"base:allocation"
_CONTEXT_ID = 1
_STRUCTURED_MAGIC = 0x668E33EF
_CHUNK_DONE = 1
_CHUNK_NONE, _CHUNK_DATA, _CHUNK_HOLE, _CHUNK_BLOCK_STATUS, _CHUNK_ERROR = 0, 1, 2, 5, (1 << 15) + 1
_STATE_DATA, _STATE_ZERO, _STATE_HOLE_ZERO = 0, 2, 3  # NBD_STATE_ZERO; | NBD_STATE_HOLE
_REQ_ONE = 1 << 3
_REP_ERR_UNSUP, _REP_ERR_INVALID, _REP_ERR_UNKNOWN = (1 << 31) + 1, (1 << 31) + 3, (1 << 31) + 6
_INFO_EXPORT, _INFO_BLOCK_SIZE = 0, 3
# NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY; and NBD_FLAG_CAN_MULTI_CONN where more than one client may connect
# (reads on one connection see what every other sees: nothing writes), as qemu's server offers it: a client that
# opened a second connection to a server of one client would wait for ever to be accepted.
_READ_ONLY_FLAGS = 1 | 2
_MULTI_CONN = 1 << 8
_REQUEST_MAGIC, _SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_BLOCK_STATUS = 0, 1, 2, 7
_EPERM, _EINVAL = 1, 22
# The largest request served, as qemu's server (its clients never ask more); a larger one is refused.
MAX_REQUEST = 32 << 20
# An option's data is an export name and a few info requests: anything longer is not a client of this server.
_MAX_OPTION = 4096 + 8
# The most runs one block status reply describes (qemu's server sends at most as many as fit its buffers; its client
# asks for one at a time): a request over a fragmented disk's whole map costs no more.
_MAX_DESCRIPTORS = 1024
# A client that has not finished the handshake by then is dropped, as by qemu's server (its slot freed).
_HANDSHAKE_SECONDS = 10.0
# Clients waiting to be accepted (the kernel caps it at net.core.somaxconn).
_BACKLOG = 4096
# A client's thread only parses requests and calls sendfile: a small stack, for servers of many clients.
_STACK = 256 << 10
# Replies leave in large pieces: a send buffer of 4 MiB (the kernel caps it at net.core.wmem_max) lets one
# sendfile move a whole 2 MiB read where the default (208 KiB) wakes the client a dozen times.
_SEND_BUFFER = 4 << 20
# A raw disk's zeros are found in blocks of 64 KiB (qcow2's cluster: a finer map would split a client's reads
# into more requests than the zeros save); the scan records its progress each 1 MiB.
_ZERO_BLOCK = 64 << 10
_SCAN_STEP = 1 << 20
# The map of a disk's blocks never takes more than 16 MiB (a byte a block): past 1 TiB the blocks grow instead.
_MAX_BLOCKS = 16 << 20
# A block's first 4 KiB are read first: a block of data mostly shows it there, and the rest need not be read.
_FIRST_LOOK = 4 << 10
_FIRST_ZEROS = bytes(_FIRST_LOOK)
# A block status request waits until the scan has passed this far beyond where it starts (or the end): a reply
# then describes a long run, not only what the scan had reached (one round trip per run, not per block).
_LOOKAHEAD = 64 << 20
_NO_MORE_DATA = 1 << 64


class _Holes:
    """Where a file's holes are (SEEK_DATA, SEEK_HOLE), asked as a scan goes forward: two calls per run of data,
    so a sparse file's holes are never read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = self.hole = 0  # the next data at or after the last place asked, and the hole that ends it

    def cover(self, start: int, end: int) -> bool:
        """Whether [start, end) lies in a hole, or past the file's end (the disk reads as zeros there: `_send_file`
        sends zeros)."""
        if start >= self.hole:
            try:
                self.data = os.lseek(self.fd, start, os.SEEK_DATA)
                self.hole = os.lseek(self.fd, self.data, os.SEEK_HOLE)
            except OSError as error:
                if error.errno != errno.ENXIO:  # a file that cannot say: everything from here on is read
                    self.data, self.hole = start, _NO_MORE_DATA
                else:  # no data from here on
                    self.data = self.hole = _NO_MORE_DATA
        return self.data >= end


class _Zeros:
    """Which blocks of a raw disk read as zeros. A layer's file has no holes, so all of a raw disk (4 GiB that
    hold 1.4 GiB) would cross the socket, zeros too: a client reading the file can skip the zeros it finds, one
    reading the export cannot unless told. One thread reads the disk once, in order, from the first block status
    request on (a client that never asks costs nothing: no thread, no map), for every client of the export; a
    request waits until the scan has passed its start by `_LOOKAHEAD` (or its end), woken only when some request's
    place is reached, not at each step of the scan, and its reply describes what the scan has passed. Each export
    of a server (`--all`) has a scan of its own, started by its own clients."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.offset, self.size = fd, offset, size
        self.block = _ZERO_BLOCK
        while size > self.block * _MAX_BLOCKS:
            self.block *= 2
        self.zero_blocks: bytearray | None = None  # 1 where the block reads as zeros; made when the scan starts
        self.scanned = 0  # bytes from the start whose blocks are known
        self.changed = threading.Condition()
        self.awaited: list[int] = []  # a heap of where waiting requests want the scan to be

    def runs(self, offset: int, length: int, limit: int) -> list[list[int]]:
        """[length, state] of the data and zero runs from `offset`, at most `limit`, covering [offset, offset
        + length) or the part of it the scan has passed."""
        with self.changed:
            if self.zero_blocks is None and self.scanned == 0:
                self._start()
            needed = min(offset + length, offset + _LOOKAHEAD, self.size)  # never past what the scan reaches
            if self.scanned < needed:
                heapq.heappush(self.awaited, needed)
                self.changed.wait_for(lambda: self.scanned >= needed)
            end = min(offset + length, self.scanned)
        zero_blocks = self.zero_blocks
        if zero_blocks is None:  # no scan to be had: all data, as before there was one
            return [[end - offset, _STATE_DATA]]
        described: list[list[int]] = []
        last = -(-end // self.block)
        while offset < end and len(described) < limit:
            block = offset // self.block
            zero = zero_blocks[block]
            other = zero_blocks.find(b"\0" if zero else b"\1", block, last)  # no further than the request
            stop = end if other < 0 else min(other * self.block, end)
            described.append([stop - offset, _STATE_ZERO if zero else _STATE_DATA])
            offset = stop
        return described

    def _start(self) -> None:
        """The map, what the scan compares with, and the scan's thread; where any cannot be had (no memory, no
        thread), the disk is described as data, and no request waits."""
        try:
            self.zero_blocks = bytearray(-(-self.size // self.block))
            zero_piece = bytes(min(self.block, _SCAN_STEP))
            threading.Thread(target=self._scan, args=(self.zero_blocks, zero_piece, _Holes(self.fd)),
                             daemon=True).start()
        except (MemoryError, RuntimeError):
            self.zero_blocks = None
            self.scanned = self.size

    def _scan(self, zero_blocks: bytearray, zero_piece: bytes, holes: _Holes) -> None:
        """Each block compared with zeros, a piece of at most 1 MiB at a time (a read into bytes and one memcmp
        beat a buffer compared by slices), up to the first piece that is not. Past the file's end the disk reads
        as zeros (`_Holes.cover`); the block the file ends in is read, and its short read makes it data. A read
        that fails (or memory that runs out) leaves the rest described as data: never wrong, only slower."""
        try:
            for start in range(0, self.size, self.block):
                end = min(start + self.block, self.size)
                zero_blocks[start // self.block] = self._reads_as_zeros(start, end, zero_piece, holes)
                if end % _SCAN_STEP == 0 or end == self.size:
                    self._passed(end)
        except (OSError, MemoryError):
            pass  # the rest stays data
        finally:
            self._passed(self.size)

    def _passed(self, end: int) -> None:
        """The scan is at `end`: where a waiting request wanted no more than that, the waiters are woken (all of
        them: those still short of their place sleep again); a step no request waits for wakes none (a thousand
        clients waiting near a large disk's end cost no wake-up per step)."""
        with self.changed:
            self.scanned = end
            if self.awaited and self.awaited[0] <= end:
                while self.awaited and self.awaited[0] <= end:
                    heapq.heappop(self.awaited)
                self.changed.notify_all()

    def _reads_as_zeros(self, start: int, end: int, zero_piece: bytes, holes: _Holes) -> bool:
        if holes.cover(self.offset + start, self.offset + end):
            return True
        look = min(_FIRST_LOOK, end - start)
        if os.pread(self.fd, look, self.offset + start) != _FIRST_ZEROS[:look]:  # whole: no copy
            return False
        # Then the whole block, its first 4 KiB again: one compare with a template of its size, no copy of one.
        for at in range(start, end, len(zero_piece)):
            want = min(len(zero_piece), end - at)
            data = os.pread(self.fd, want, self.offset + at)
            if len(data) != want or data != zero_piece[:want]:
                return False
        return True


@dataclass(frozen=True)
class Export:
    """One disk: its export name, and `size` bytes at `offset` in the open file `fd`; or, given `extents`
    ((start, length, offset in the file, or -1 where it reads as zeros), covering the export in order), the disk
    as those pieces of the file (a qcow2 as `qemu-img map` maps it). `zeros`: where a raw disk reads as zeros,
    found by a scan (`serve()` gives each raw export one); without it, block status tells the map's pieces (a
    raw disk: all data)."""

    name: bytes
    fd: int
    offset: int
    size: int
    extents: tuple[tuple[int, int, int], ...] = ()
    flags: int = _READ_ONLY_FLAGS
    zeros: _Zeros | None = dataclasses.field(default=None, compare=False, repr=False)

    def pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """The extents of [offset, offset + length), cut to it, in order: (start, length, file offset or -1). The
        first found by bisection, the rest walked one by one as the caller takes them: a qcow2 of many clusters
        maps to as many extents, and no request may cost a walk of the whole map."""
        if not self.extents:
            yield offset, length, self.offset + offset
            return
        end = offset + length
        index = max(bisect.bisect_right(self.extents, (offset, 1 << 64, 1 << 64)) - 1, 0)
        while index < len(self.extents):
            start, size, where = self.extents[index]
            index += 1
            if start >= end:
                return
            if start + size <= offset:
                continue
            first, last = max(start, offset), min(start + size, end)
            yield first, last - first, -1 if where < 0 else where + first - start


@dataclass
class _Connection:
    """What a client negotiated: structured replies, and the base:allocation context."""

    structured: bool = False
    allocation: bool = False


# A client that closed the connection or broke the protocol is dropped by raising ConnectionAbortedError (an
# OSError, caught with the socket's own): this file runs alone in the sandbox, with no cdisk module to import.
def _recv(conn: net.socket, size: int, deadline: float | None = None) -> bytes:
    """`size` bytes; with a `deadline` (time.monotonic()), all of them by then (a client sending a byte at a
    time cannot hold its slot by keeping each wait short)."""
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionAbortedError
            conn.settimeout(left)
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise ConnectionAbortedError
        data += chunk
    return bytes(data)


def _discard(conn: net.socket, size: int) -> None:
    """Read `size` bytes and keep none (a refused write's payload: the client sends it anyway)."""
    while size > 0:
        chunk = conn.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionAbortedError
        size -= len(chunk)


def _reply(conn: net.socket, option: int, kind: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", _REPLY_MAGIC, option, kind, len(data)) + data)


def _handshake(conn: net.socket, exports: dict[bytes, Export], state: _Connection,
               deadline: float) -> Export | None:
    """The option haggling, over by `deadline`; the export the client chose (None: it left, as ABORT says)."""
    conn.sendall(_GREETING + struct.pack(">H", _HANDSHAKE_FLAGS))
    (client_flags,) = struct.unpack(">I", _recv(conn, 4, deadline))
    if client_flags & ~3:
        raise ConnectionAbortedError
    while True:
        magic, option, length = struct.unpack(">8sII", _recv(conn, 16, deadline))
        if magic != _OPT_MAGIC or length > _MAX_OPTION:
            raise ConnectionAbortedError
        data = _recv(conn, length, deadline)
        if option == _OPT_EXPORT_NAME:
            export = exports.get(data)
            if export is None:
                raise ConnectionAbortedError  # this option has no error reply: the protocol says close
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
        if option == _OPT_STRUCTURED_REPLY:
            if data:
                _reply(conn, option, _REP_ERR_INVALID)
                continue
            state.structured = True
            _reply(conn, option, _REP_ACK)
            continue
        if option in (_OPT_LIST_META_CONTEXT, _OPT_SET_META_CONTEXT):
            queries = _queries(data, exports)
            if isinstance(queries, int) or (option == _OPT_SET_META_CONTEXT and not state.structured):
                _reply(conn, option, queries if isinstance(queries, int) else _REP_ERR_INVALID)
                continue
            listing = option == _OPT_LIST_META_CONTEXT
            matched = any(q == _BASE_ALLOCATION or (listing and q == b"base:") for q in queries) or (
                listing and not queries)
            if not listing:
                state.allocation = matched
            if matched:
                _reply(conn, option, _REP_META_CONTEXT, struct.pack(">I", _CONTEXT_ID) + _BASE_ALLOCATION)
            _reply(conn, option, _REP_ACK)
            continue
        _reply(conn, option, _REP_ERR_UNSUP)  # TLS, ...


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


def _queries(data: bytes, exports: dict[bytes, Export]) -> list[bytes] | int:
    """The context queries of a LIST or SET_META_CONTEXT, or the error to reply."""
    try:
        (name_length,) = struct.unpack(">I", data[:4])
        name, rest = data[4:4 + name_length], data[4 + name_length:]
        (count,) = struct.unpack(">I", rest[:4])
        rest, queries = rest[4:], []
        for _ in range(count):
            (length,) = struct.unpack(">I", rest[:4])
            if len(rest) < 4 + length:
                return _REP_ERR_INVALID
            queries.append(rest[4:4 + length])
            rest = rest[4 + length:]
    except struct.error:
        return _REP_ERR_INVALID
    if rest or len(name) != name_length:
        return _REP_ERR_INVALID
    return queries if name in exports else _REP_ERR_UNKNOWN


def _chunk(conn: net.socket, flags: int, kind: int, handle: int, payload: bytes, more: int = 0) -> None:
    """A structured reply chunk's header and `payload`; `more` bytes of it follow (a read's data)."""
    conn.sendall(struct.pack(">IHHQI", _STRUCTURED_MAGIC, flags, kind, handle, len(payload) + more) + payload)


def _error(conn: net.socket, state: _Connection, handle: int, error: int) -> None:
    if state.structured:
        _chunk(conn, _CHUNK_DONE, _CHUNK_ERROR, handle, struct.pack(">IH", error, 0))
    else:
        conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, error, handle))


def _send_file(conn: net.socket, fd: int, where: int, length: int) -> None:
    """`length` bytes of the file at `where` by sendfile; past its end (a partial last sector), zeros, as qemu
    reads it."""
    sent = 0
    while sent < length:
        done = os.sendfile(conn.fileno(), fd, where + sent, length - sent)
        if done == 0:
            _send_zeros(conn, length - sent)
            return
        sent += done


def _send_zeros(conn: net.socket, length: int) -> None:
    zeros = bytes(min(length, 1 << 20))
    while length > 0:
        conn.sendall(zeros[:length])
        length -= len(zeros)


def _read(conn: net.socket, export: Export, state: _Connection, handle: int, offset: int, length: int) -> None:
    pieces = export.pieces(offset, length)
    if not state.structured:
        conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, 0, handle))
        for _, size, where in pieces:
            if where < 0:
                _send_zeros(conn, size)
            else:
                _send_file(conn, export.fd, where, size)
        return
    # The last chunk carries the done flag itself (the protocol allows it on any chunk): no empty chunk after it,
    # one reply header and one wake-up of the client less per read.
    piece = next(pieces, None)
    if piece is None:
        _chunk(conn, _CHUNK_DONE, _CHUNK_NONE, handle, b"")
        return
    while piece is not None:
        start, size, where = piece
        piece = next(pieces, None)
        flags = _CHUNK_DONE if piece is None else 0
        if where < 0:
            _chunk(conn, flags, _CHUNK_HOLE, handle, struct.pack(">QI", start, size))
        else:
            _chunk(conn, flags, _CHUNK_DATA, handle, struct.pack(">Q", start), size)
            _send_file(conn, export.fd, where, size)


def _mapped(export: Export, offset: int, length: int, limit: int) -> list[list[int]]:
    """[length, state] of a qcow2's runs from `offset` as its map has them: data, or holes."""
    described: list[list[int]] = []
    for _, size, where in export.pieces(offset, length):
        state = _STATE_HOLE_ZERO if where < 0 else _STATE_DATA
        if described and described[-1][1] == state:
            described[-1][0] += size
        elif len(described) == limit:
            break
        else:
            described.append([size, state])
    return described


def _block_status(conn: net.socket, export: Export, handle: int, flags: int, offset: int, length: int) -> None:
    """base:allocation of [offset, offset + length): data, or zeros (a qcow2's holes, a raw disk's runs). At most
    `_MAX_DESCRIPTORS` runs (one with NBD_CMD_FLAG_REQ_ONE, as qemu's client asks): the protocol lets a reply cover
    less than was asked, and the client asks again from where it ends."""
    limit = 1 if flags & _REQ_ONE else _MAX_DESCRIPTORS
    zeros = export.zeros
    described = zeros.runs(offset, length, limit) if zeros is not None else _mapped(export, offset, length, limit)
    payload = struct.pack(">I", _CONTEXT_ID) + b"".join(struct.pack(">II", size, state) for size, state in described)
    _chunk(conn, _CHUNK_DONE, _CHUNK_BLOCK_STATUS, handle, payload)


def _transmit(conn: net.socket, export: Export, state: _Connection) -> None:
    """Answer requests until the client disconnects: a READ by sendfile from the file, anything else refused."""
    while True:
        magic, flags, kind, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
        if magic != _REQUEST_MAGIC:
            raise ConnectionAbortedError
        if kind == _CMD_DISC:
            return
        if kind == _CMD_WRITE:
            if length > MAX_REQUEST:
                raise ConnectionAbortedError
            _discard(conn, length)  # its payload, to stay in step with the client
            conn.sendall(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, _EPERM, handle))
            continue
        if kind == _CMD_BLOCK_STATUS and state.allocation and length > 0 and offset + length <= export.size:
            _block_status(conn, export, handle, flags, offset, length)
            continue
        if kind != _CMD_READ or length > MAX_REQUEST or offset + length > export.size:
            _error(conn, state, handle, _EINVAL)
            continue
        _read(conn, export, state, handle, offset, length)


def _client(conn: net.socket, exports: dict[bytes, Export], slots: threading.BoundedSemaphore) -> None:
    try:
        with conn:
            conn.setsockopt(net.SOL_SOCKET, net.SO_SNDBUF, _SEND_BUFFER)
            state = _Connection()
            export = _handshake(conn, exports, state, time.monotonic() + _HANDSHAKE_SECONDS)
            if export is not None:
                conn.settimeout(None)
                _transmit(conn, export, state)
    except OSError:
        pass
    finally:
        slots.release()


def serve(listener: net.socket, exports: list[Export], clients: int, multi_conn: bool = False) -> None:
    """Serve clients on `listener` until it is closed, at most `clients` at once: a thread per client, started
    once a slot is free (the others wait to be accepted, as with qemu's max-connections, so clients that come
    and go at once cannot outrun the server, and an idle server of many allowed clients holds no thread). With
    `multi_conn`, each export tells a client it may read over several connections."""
    flags = _READ_ONLY_FLAGS | (_MULTI_CONN if multi_conn else 0)
    by_name = {export.name: dataclasses.replace(
        export, flags=flags, zeros=None if export.extents else _Zeros(export.fd, export.offset, export.size))
        for export in exports}
    # listen() again, as qemu's servers do with a socket they are handed: the socket's credentials
    # (SO_PEERCRED, SO_PEERPIDFD) then name this server, which is how `serve --stop` finds it.
    listener.listen(_BACKLOG)
    threading.stack_size(_STACK)
    slots = threading.BoundedSemaphore(clients)
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
        try:
            threading.Thread(target=_client, args=(conn, by_name, slots), daemon=True).start()
        except RuntimeError:  # no thread to be had (a limit on tasks): this client is turned away, not the next
            conn.close()
            slots.release()


def main(argv: list[str]) -> None:
    """LISTEN_FD MAX_CLIENTS MULTI_CONN (0 or 1) EXPORTS_FD: a descriptor to read the exports from, a JSON list of
    {"name", "file", "offset", "size", "extents"} (`Export`'s fields; the name as text, undecodable bytes escaped
    as surrogates)."""
    listen_fd, clients, multi_conn, exports_fd = int(argv[0]), int(argv[1]), argv[2] == "1", int(argv[3])
    with os.fdopen(exports_fd, "rb") as f:
        described = json.loads(f.read())
    exports = []
    for export in described:
        fd = os.open(export["file"], os.O_RDONLY | os.O_CLOEXEC)
        exports.append(Export(os.fsencode(export["name"]), fd, int(export["offset"]), int(export["size"]),
                              tuple((int(a), int(b), int(c)) for a, b, c in export["extents"])))
    serve(net.socket(fileno=listen_fd), exports, clients, multi_conn)


if __name__ == "__main__":
    main(sys.argv[1:])
