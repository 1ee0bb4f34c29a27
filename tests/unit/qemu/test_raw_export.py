"""core/qemu/raw_export.py: the NBD handshake and reads, spoken byte by byte to a server on a temp file."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdisk.core.qemu import raw_export

DATA = bytes(range(256)) * 64  # 16 KiB
OFFSET = 512  # the export is DATA[OFFSET:OFFSET + SIZE], as a slice of a tar
SIZE = 8192
REPLY_MAGIC = 0x3E889045565A9
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN = (1 << 31) + 1, (1 << 31) + 3, (1 << 31) + 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A server of two exports (`d`: the slice; `tail`: past the file's end, as a partial last sector) at most
    two clients at once; its socket's path."""
    path = tmp_path / "disk"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "nbd.sock"))
    listener.listen(8)
    exports = [raw_export.Export(b"d", fd, OFFSET, SIZE), raw_export.Export(b"tail", fd, len(DATA) - 100, 512)]
    threading.Thread(target=raw_export.serve, args=(listener, exports, 2, True), daemon=True).start()
    yield str(tmp_path / "nbd.sock")
    listener.close()


def recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def connect(path: str, flags: int = 3) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(path)
    assert recv(conn, 18) == b"NBDMAGICIHAVEOPT" + struct.pack(">H", 3)
    conn.sendall(struct.pack(">I", flags))
    return conn


def option(conn: socket.socket, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
    """Send an option; its replies (type, data) up to the ACK or an error."""
    conn.sendall(b"IHAVEOPT" + struct.pack(">II", opt, len(data)) + data)
    replies = []
    while True:
        magic, echoed, kind, length = struct.unpack(">QIII", recv(conn, 20))
        assert magic == REPLY_MAGIC and echoed == opt
        replies.append((kind, recv(conn, length)))
        if kind == 1 or kind & (1 << 31):
            return replies


def go(conn: socket.socket, name: bytes, *info: int) -> list[tuple[int, bytes]]:
    return option(conn, 7, struct.pack(">I", len(name)) + name + struct.pack(f">H{len(info)}H", len(info), *info))


def request(conn: socket.socket, kind: int, offset: int, length: int, handle: int = 7) -> tuple[int, bytes]:
    """Send a request; the reply's error, and the data a successful read carries."""
    conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, kind, handle, offset, length))
    magic, error, got = struct.unpack(">IIQ", recv(conn, 16))
    assert magic == 0x67446698 and got == handle
    return error, recv(conn, length) if kind == 0 and error == 0 else b""


def test_go_then_reads_of_the_slice(server: str) -> None:
    with connect(server) as conn:
        replies = go(conn, b"d", 3)
        assert replies[0] == (3, struct.pack(">HQH", 0, SIZE, 1 | 2 | 256))  # read-only, multi-conn
        assert replies[1] == (3, struct.pack(">HIII", 3, 1, 4096, 32 << 20))
        assert replies[-1] == (1, b"")
        assert request(conn, 0, 0, SIZE) == (0, DATA[OFFSET:OFFSET + SIZE])
        assert request(conn, 0, 1000, 24) == (0, DATA[OFFSET + 1000:OFFSET + 1024])


def test_list_names_every_export_and_info_leaves_the_choice_open(server: str) -> None:
    with connect(server) as conn:
        listed = option(conn, 3)
        assert listed == [(2, b"\0\0\0\x01d"), (2, b"\0\0\0\x04tail"), (1, b"")]
        assert option(conn, 6, struct.pack(">I", 4) + b"tail" + b"\0\0")[0] == (3, struct.pack(">HQH", 0, 512, 259))
        go(conn, b"d")
        assert request(conn, 0, 0, 4)[1] == DATA[OFFSET:OFFSET + 4]


def test_an_unknown_export_or_option_is_an_error_reply_and_the_haggling_goes_on(server: str) -> None:
    with connect(server) as conn:
        assert go(conn, b"nope") == [(ERR_UNKNOWN, b"")]
        assert option(conn, 5) == [(ERR_UNSUP, b"")]  # STARTTLS: not offered
        assert option(conn, 7, b"\0\0\0\x09d") == [(ERR_INVALID, b"")]  # a name longer than the data
        assert go(conn, b"d")[-1] == (1, b"")


def test_export_name_without_no_zeroes_pads_as_the_protocol_says(server: str) -> None:
    with connect(server, flags=1) as conn:
        conn.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 1) + b"d")
        assert recv(conn, 10 + 124) == struct.pack(">QH", SIZE, 259) + bytes(124)
        assert request(conn, 0, 8, 8)[1] == DATA[OFFSET + 8:OFFSET + 16]


def test_out_of_bounds_too_large_and_write_requests_are_refused_in_step(server: str) -> None:
    with connect(server) as conn:
        go(conn, b"d")
        assert request(conn, 0, SIZE - 4, 8) == (22, b"")
        assert request(conn, 0, 0, (32 << 20) + 1) == (22, b"")
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 9, 0, 4) + b"abcd")  # a write and its payload
        assert struct.unpack(">IIQ", recv(conn, 16)) == (0x67446698, 1, 9)  # EPERM
        assert request(conn, 4, 0, 0) == (22, b"")  # trim
        assert request(conn, 0, 0, 4) == (0, DATA[OFFSET:OFFSET + 4])


def test_past_the_file_end_reads_zeros(server: str) -> None:
    with connect(server) as conn:
        go(conn, b"tail")
        assert request(conn, 0, 0, 512) == (0, DATA[-100:] + bytes(412))


def test_a_bad_request_magic_ends_the_connection(server: str) -> None:
    with connect(server) as conn:
        go(conn, b"d")
        conn.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 4))
        assert conn.recv(16) == b""


def test_clients_beyond_the_limit_wait_for_a_free_slot(server: str) -> None:
    first, second = connect(server), connect(server)
    third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    third.settimeout(0.3)
    third.connect(server)
    with pytest.raises(TimeoutError):
        third.recv(18)  # not accepted yet: no greeting
    first.close()
    third.settimeout(5)
    assert recv(third, 18)[:8] == b"NBDMAGIC"
    second.close()
    third.close()


def test_abort_is_acknowledged(server: str) -> None:
    with connect(server) as conn:
        assert option(conn, 2) == [(1, b"")]
        assert conn.recv(1) == b""


def one_export(tmp_path: Path, clients: int, name: bytes = b"d", size: int = 512,
               extents: tuple[tuple[int, int, int], ...] = (), data: bytes = DATA,
               offset: int = 0) -> tuple[socket.socket, str]:
    """A server of one export of a file holding `data` (`size` bytes from `offset`, or `extents` of it) to at most
    `clients` at once: its listener (the test closes it) and its socket's path."""
    path = tmp_path / "disk"
    path.write_bytes(data)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "one.sock"))
    listener.listen(8)
    export = raw_export.Export(name, os.open(path, os.O_RDONLY), offset, size, extents)
    threading.Thread(target=raw_export.serve, args=(listener, [export], clients), daemon=True).start()
    return listener, str(tmp_path / "one.sock")


def test_multi_conn_is_offered_only_when_asked(tmp_path: Path) -> None:
    """One client at a time: no multi-conn, or a client's second connection would wait to be accepted for ever."""
    listener, path = one_export(tmp_path, 1)
    with listener, connect(path) as conn:
        assert go(conn, b"d")[0] == (3, struct.pack(">HQH", 0, 512, 1 | 2))


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[str]:
    """An export mapped as a qcow2 is: 4 KiB of data at file offset 1024, 8 KiB of zeros, 4 KiB at offset 0."""
    listener, path = one_export(tmp_path, 2, b"m", 16384, ((0, 4096, 1024), (4096, 8192, -1), (12288, 4096, 0)))
    with listener:
        yield path


def meta_context(conn: socket.socket, opt: int, *queries: bytes) -> list[tuple[int, bytes]]:
    data = struct.pack(">I", 1) + b"m" + struct.pack(">I", len(queries))
    return option(conn, opt, data + b"".join(struct.pack(">I", len(q)) + q for q in queries))


def chunks(conn: socket.socket, handle: int) -> list[tuple[int, int, bytes]]:
    """A structured reply's chunks (flags, type, payload) up to the one flagged done."""
    got = []
    while True:
        magic, flags, kind, echoed, length = struct.unpack(">IHHQI", recv(conn, 20))
        assert magic == 0x668E33EF and echoed == handle
        got.append((flags, kind, recv(conn, length)))
        if flags & 1:
            return got


def structured(path: str) -> socket.socket:
    conn = connect(path)
    assert option(conn, 8) == [(1, b"")]
    assert meta_context(conn, 10, b"qemu:allocation-depth", b"base:allocation") == [
        (4, b"\0\0\0\x01base:allocation"), (1, b"")]
    go(conn, b"m")
    return conn


def test_a_mapped_export_reads_as_its_pieces(mapped: str) -> None:
    with connect(mapped) as conn:
        go(conn, b"m")
        assert request(conn, 0, 0, 16384)[1] == DATA[1024:5120] + bytes(8192) + DATA[:4096]
        assert request(conn, 0, 4000, 200)[1] == DATA[5024:5120] + bytes(104)


def test_structured_reads_send_the_zeros_as_holes(mapped: str) -> None:
    with structured(mapped) as conn:
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 5, 2048, 12288))
        assert chunks(conn, 5) == [(0, 1, struct.pack(">Q", 2048) + DATA[3072:5120]),
                                   (0, 2, struct.pack(">QI", 4096, 8192)),
                                   (1, 1, struct.pack(">Q", 12288) + DATA[:2048])]  # the last is flagged done
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 6, 16000, 1000))  # past the end
        assert chunks(conn, 6) == [(1, (1 << 15) + 1, struct.pack(">IH", 22, 0))]


def test_block_status_says_where_the_zeros_are(mapped: str) -> None:
    with structured(mapped) as conn:
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 8, 1024, 15360))
        assert chunks(conn, 8) == [(1, 5, struct.pack(">IIIIIII", 1, 3072, 0, 8192, 3, 4096, 0))]
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 8, 7, 9, 4096, 12288))  # NBD_CMD_FLAG_REQ_ONE
        assert chunks(conn, 9) == [(1, 5, struct.pack(">III", 1, 8192, 3))]


def test_meta_contexts_need_structured_replies_and_a_known_export(mapped: str) -> None:
    with connect(mapped) as conn:
        assert meta_context(conn, 10, b"base:allocation") == [(ERR_INVALID, b"")]
        assert meta_context(conn, 9) == [(4, b"\0\0\0\x01base:allocation"), (1, b"")]  # LIST: what there is
        option(conn, 8)
        data = struct.pack(">I", 4) + b"nope" + struct.pack(">I", 0)
        assert option(conn, 10, data) == [(ERR_UNKNOWN, b"")]
        go(conn, b"m")
        conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 3, 0, 4096))  # block status, no context chosen
        assert chunks(conn, 3) == [(1, (1 << 15) + 1, struct.pack(">IH", 22, 0))]


def test_pieces_of_many_extents_are_found_as_a_scan_finds_them() -> None:
    """A qcow2 maps to an extent per run of clusters: the pieces of any range, found by bisection, are the ones
    a scan from the start finds (edges, one extent, several, the last)."""
    extents = tuple((i * 4096, 4096, -1 if i % 3 == 0 else (i * 7919 % 1000) * 4096) for i in range(1000))
    export = raw_export.Export(b"m", -1, 0, 1000 * 4096, extents)

    def scanned(offset: int, length: int) -> list[tuple[int, int, int]]:
        out = []
        for start, size, where in extents:
            first, last = max(start, offset), min(start + size, offset + length)
            if first < last:
                out.append((first, last - first, -1 if where < 0 else where + first - start))
        return out

    for offset, length in ((0, 1), (0, 4096), (4095, 2), (4096, 4096), (123456, 50000), (999 * 4096, 4096),
                           (1000 * 4096 - 1, 1), (0, 1000 * 4096)):
        assert list(export.pieces(offset, length)) == scanned(offset, length)


def test_a_client_trickling_its_handshake_is_dropped_at_the_deadline(monkeypatch: pytest.MonkeyPatch,
                                                                     server: str) -> None:
    """The handshake's bound is on the whole of it, not on each wait: a byte every little while must not keep a
    client's slot (the limit of clients is two) beyond it."""
    monkeypatch.setattr(raw_export, "_HANDSHAKE_SECONDS", 0.6)
    with connect(server) as conn:
        option_header = b"IHAVEOPT" + struct.pack(">II", 1, 1)
        dropped = False
        for byte in option_header:
            try:
                conn.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            conn.settimeout(0.2)
            try:
                if conn.recv(1) == b"":
                    dropped = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # dropped while a byte was on its way
                dropped = True
                break
        assert dropped, "a client sending a byte every 0.2 s kept its handshake going past the 0.6 s bound"


def test_a_refused_writes_payload_is_not_held_in_memory(server: str) -> None:
    """The largest write a client may send (32 MiB) is read and dropped piece by piece, not kept whole."""
    import tracemalloc

    with connect(server) as conn:
        go(conn, b"d")
        tracemalloc.start()
        try:
            conn.settimeout(30)
            size = 32 << 20
            conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 9, 0, size))
            piece = bytes(1 << 20)
            for _ in range(size >> 20):
                conn.sendall(piece)
            assert struct.unpack(">IIQ", recv(conn, 16)) == (0x67446698, 1, 9)  # EPERM
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, f"{peak} bytes held while a 32 MiB write was refused"
        assert request(conn, 0, 0, 4) == (0, DATA[OFFSET:OFFSET + 4])


def test_an_idle_server_of_many_allowed_clients_holds_no_thread_per_client(tmp_path: Path) -> None:
    """`serve --shared 1000` over eight exports may allow thousands of clients: threads start as clients come."""
    before = threading.active_count()
    listener, path = one_export(tmp_path, 5000)
    with listener, connect(path) as conn:
        go(conn, b"d")
        assert request(conn, 0, 0, 4) == (0, DATA[:4])
        assert threading.active_count() <= before + 2  # the server's loop and this one client's thread


class _Counted(tuple):  # type: ignore[type-arg]
    """A map that counts the extents looked at."""

    looked = 0

    def __getitem__(self, index: object) -> object:
        type(self).looked += 1
        return super().__getitem__(index)  # type: ignore[index]


def test_block_status_of_a_fragmented_map_looks_at_no_more_than_it_describes(tmp_path: Path) -> None:
    """qemu's client asks the status of up to 2 GiB at a time and wants one run back: on a map of 100,000
    alternating runs, a reply looks at the extents it describes, not at every extent in the range asked."""
    runs = 100_000
    extents = _Counted((i * 4096, 4096, -1 if i % 2 else i * 4096) for i in range(runs))
    listener, path = one_export(tmp_path, 1, b"m", runs * 4096, extents)
    with listener, structured(path) as conn:
        for flags, most in ((1 << 3, 1), (0, 1024)):
            _Counted.looked = 0
            conn.sendall(struct.pack(">IHHQQI", 0x25609513, flags, 7, 9, 4096 * 10, (runs - 20) * 4096))
            [(_, kind, payload)] = chunks(conn, 9)
            described = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)[1:]
            assert kind == 5 and len(described) == 2 * most
            assert described[:4] == ((4096, 0, 4096, 3) if most > 1 else (4096, 0))
            assert _Counted.looked < most + 100  # the bisection's steps and the runs described


BLOCK = 64 << 10


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[str]:
    """A raw export `m` at offset 512 of its file, as in a tar: a block of data, two of zeros, a block of zeros
    but for its last byte, and 1,000 bytes more of which the file holds 500 (a partial last sector)."""
    disk = b"\1" * BLOCK + bytes(2 * BLOCK) + bytes(BLOCK - 1) + b"\1" + bytes(500)
    listener, path = one_export(tmp_path, 2, b"m", 4 * BLOCK + 1000, data=b"\1" * 512 + disk, offset=512)
    with listener:
        yield path


def status(conn: socket.socket, flags: int, offset: int, length: int) -> list[tuple[int, int]]:
    conn.sendall(struct.pack(">IHHQQI", 0x25609513, flags, 7, 3, offset, length))
    [(done, kind, payload)] = chunks(conn, 3)
    assert done == 1 and kind == 5
    described = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)[1:]
    return list(zip(described[::2], described[1::2], strict=True))


def test_block_status_of_a_raw_export_tells_its_zero_blocks(raw: str) -> None:
    """A layer's file has no holes: the server reads the disk once to find its 64 KiB blocks of zeros, and tells
    them as zeros (allocated: the bytes are stored) so that a client skips them. A block with one byte set is
    data, and so is the last, short block (the file ends inside it: never a zero the file does not hold)."""
    with structured(raw) as conn:
        size = 4 * BLOCK + 1000
        assert status(conn, 0, 0, size) == [(BLOCK, 0), (2 * BLOCK, 2), (BLOCK + 1000, 0)]
        assert status(conn, 1 << 3, BLOCK + 4096, size - BLOCK - 4096) == [(2 * BLOCK - 4096, 2)]  # REQ_ONE
        assert status(conn, 0, 512, 1024) == [(1024, 0)]
        assert status(conn, 0, 2 * BLOCK, BLOCK + 512) == [(BLOCK, 2), (512, 0)]
        assert request_structured(conn, 0, 4 * BLOCK) == b"\1" * BLOCK + bytes(2 * BLOCK) + bytes(BLOCK - 1) + b"\1"


def request_structured(conn: socket.socket, offset: int, length: int) -> bytes:
    conn.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 4, offset, length))
    return b"".join(payload[8:] for _, kind, payload in chunks(conn, 4) if kind == 1)


def zeros_of(tmp_path: Path, data: bytes, size: int | None = None) -> raw_export._Zeros:
    """The zero map of a raw export of a file holding `data` (`size` bytes of it: more reads past its end)."""
    path = tmp_path / "scanned"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return raw_export._Zeros(fd, 0, len(data) if size is None else size)


def test_blocks_past_the_files_end_are_zeros_and_the_block_it_ends_in_is_data(tmp_path: Path) -> None:
    """The server sends zeros past the file's end: a block wholly there is told as zeros; the one the file ends in
    (100 stored zero bytes, then nothing) is data: never a zero the scan has not seen."""
    zeros = zeros_of(tmp_path, b"\1" * BLOCK + bytes(100), 3 * BLOCK)
    assert zeros.runs(0, 3 * BLOCK, 1024) == [[2 * BLOCK, 0], [BLOCK, 2]]


def test_a_sparse_files_holes_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SEEK_DATA says where the data is: of a sparse file of 64 blocks, only its one block of data is read."""
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(64 * BLOCK)
        f.seek(10 * BLOCK)
        f.write(b"\1" * BLOCK)
    read: list[int] = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: read.append(at) or pread(fd, n, at))
    zeros = raw_export._Zeros(os.open(path, os.O_RDONLY), 0, 64 * BLOCK)
    assert zeros.runs(0, 64 * BLOCK, 1024) == [[10 * BLOCK, 2], [BLOCK, 0], [53 * BLOCK, 2]]
    assert read and all(10 * BLOCK <= at < 11 * BLOCK for at in read)


def test_a_file_that_cannot_tell_its_holes_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SEEK_DATA failing otherwise than with ENXIO (a FUSE or NFS server's EIO) says nothing about holes: the
    blocks are read, never taken for zeros."""
    def lseek(fd: int, at: int, whence: int) -> int:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "lseek", lseek)
    zeros = zeros_of(tmp_path, b"\1" * BLOCK + bytes(BLOCK) + b"\1" * BLOCK)
    assert zeros.runs(0, 3 * BLOCK, 1024) == [[BLOCK, 0], [BLOCK, 2], [BLOCK, 0]]


def test_a_read_that_fails_leaves_the_rest_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk's third block cannot be read: the two before it are known, everything from it on is data."""
    pread = os.pread

    def failing(fd: int, n: int, at: int) -> bytes:
        if at >= 2 * BLOCK:
            raise OSError(errno.EIO, "injected")
        return pread(fd, n, at)

    monkeypatch.setattr(os, "pread", failing)
    zeros = zeros_of(tmp_path, b"\1" * BLOCK + bytes(5 * BLOCK))
    assert zeros.runs(0, 6 * BLOCK, 1024) == [[BLOCK, 0], [BLOCK, 2], [4 * BLOCK, 0]]


def test_no_thread_to_scan_with_is_all_data_and_no_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server at its limit of tasks cannot start the scan: the disk is told as data, now and next time."""
    class NoThread:
        def __init__(self, **_: object) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(raw_export.threading, "Thread", NoThread)
    zeros = zeros_of(tmp_path, bytes(4 * BLOCK))
    assert zeros.runs(0, 4 * BLOCK, 1024) == [[4 * BLOCK, 0]]
    assert zeros.runs(BLOCK, BLOCK, 1) == [[BLOCK, 0]]


def test_no_memory_for_the_scan_is_all_data_and_no_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the scan needs besides its map cannot be had (a server near its address-space limit): the disk is
    told as data, and no request waits for a scan that cannot come (was: every block status hung)."""
    def no_memory(fd: int) -> None:
        raise MemoryError

    monkeypatch.setattr(raw_export, "_Holes", no_memory)
    zeros = zeros_of(tmp_path, bytes(4 * BLOCK))
    answered: list[list[list[int]]] = []
    asking = threading.Thread(target=lambda: answered.append(zeros.runs(0, 4 * BLOCK, 1024)), daemon=True)
    asking.start()
    asking.join(10)
    assert answered == [[[4 * BLOCK, 0]]]


def test_a_waiting_request_is_woken_when_the_scan_reaches_it_not_at_each_step(tmp_path: Path) -> None:
    """A request for 64 MiB waits for the scan's 64 steps of 1 MiB and is woken once (was: at every step, each
    waiting client of a large disk woken a million times per TiB)."""
    class Counted(threading.Condition):
        wakes = 0

        def notify_all(self) -> None:
            Counted.wakes += 1
            super().notify_all()

    zeros = zeros_of(tmp_path, b"\1", 64 << 20)
    zeros.changed = Counted()
    assert zeros.runs(0, 64 << 20, 1024) == [[BLOCK, 0], [(64 << 20) - BLOCK, 2]]
    assert zeros.runs(0, 1, 1) == [[1, 0]]  # the scan has ended: no more to wait for
    assert Counted.wakes == 1


def test_a_reply_describes_no_further_than_the_scan_has_read(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan held at 2 MiB: a request that may be answered then (2 MiB of look-ahead here) describes the 2 MiB
    read, not the rest, which the map does not know yet."""
    gate = threading.Event()
    pread = os.pread

    def held(fd: int, n: int, at: int) -> bytes:
        if at >= 2 << 20:
            gate.wait(10)
        return pread(fd, n, at)

    monkeypatch.setattr(os, "pread", held)
    monkeypatch.setattr(raw_export, "_LOOKAHEAD", 2 << 20)
    zeros = zeros_of(tmp_path, bytes(8 << 20))
    try:
        assert zeros.runs(0, 8 << 20, 1024) == [[2 << 20, 2]]
    finally:
        gate.set()
    assert zeros.runs(6 << 20, 2 << 20, 1024) == [[2 << 20, 2]]  # waits for the scan to reach the end


def test_the_blocks_grow_so_that_the_map_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A map of at most 4 blocks (16 Mi on a real server: 1 TiB of 64 KiB blocks): a 1 MiB disk has blocks of
    256 KiB, one byte of data making its whole block data."""
    monkeypatch.setattr(raw_export, "_MAX_BLOCKS", 4)
    zeros = zeros_of(tmp_path, b"\1" + bytes((1 << 20) - 1))
    assert zeros.block == 256 << 10
    assert zeros.runs(0, 1 << 20, 1024) == [[256 << 10, 0], [768 << 10, 2]]
