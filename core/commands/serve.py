"""`cdisk serve`: the image's disk as a read-only NBD export, read in place — no conversion at all.

qemu-storage-daemon serves the very `json:` spec convert reads (a raw slice of a saved layer, the `/dev/fd/N`
file in place, a decompressed copy), its format explicit and `"backing": null`, confined to a sandbox that holds
the disk and nothing else — no writable file, no network. cdisk makes the listening socket itself (Unix or
TCP) and hands the server its descriptor: the server cannot choose what is published, nor reach the host's
network, and a path or port already taken is refused before the image is opened. The export is the disk as
the format decodes it (raw bytes): a client never parses the image's qcow2 (or vmdk, …) itself. The image stays
held (descriptors, a mount, a saved copy) the whole time; when the block ends the server is stopped and the
socket removed — also with a client connected.

qemu-storage-daemon, not qemu-nbd: it takes a listening descriptor of any number (qemu-nbd only systemd's fd 3,
where a disk's descriptor may already be) and serves several exports on one socket (`--all`).

A raw disk, or a qcow2 whose every cluster lies whole in the file (qemu-img maps it once: no compressed
cluster), is served by `core/qemu/raw_export.py` instead (with `--all`, when every disk is), in the same
sandbox: with nothing left to decode, its bytes go from the page cache into the socket by sendfile, so the
client's copy is the only one — as when it reads the file itself — where qemu-storage-daemon adds two; and
a raw disk's runs of zeros are told by block status (found by reading it once), so a client skips them (issue
24; docs/bench/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket as net
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cdisk.core import leftovers, processes
from cdisk.core.errors import CdiskError, TargetError, ToolError, UsageError
from cdisk.core.progress import Progress
from cdisk.core.qemu import nbd, qemu_img, raw_export, sandbox
from cdisk.core.qemu.nbd import Endpoint
from cdisk.core.reading.pipeline import OpenedDisk, opened_disks
from cdisk.core.request import ImageRequest, ReadRequest
from cdisk.core.target import new_file_mode

SERVER = "qemu-storage-daemon"
# Debian's package for it; its recommends (gstreamer, mesa, …) a storage daemon does not need.
SERVER_PACKAGE = "--no-install-recommends qemu-system-common"
# How long the server may take to serve; it takes ~10 ms here.
READY_SECONDS = 10.0
# How long `--stop` waits for the server to end (it stops its server, then removes what it made).
STOP_SECONDS = 30.0
SOCKET_NAME = "nbd.sock"
# The server's address space: what a disk needs (the limit of every qemu tool that opens an image), plus what
# each client may make it hold — 16 requests of up to 32 MiB in flight, and their coroutines.
CLIENT_ADDRESS_SPACE = 576 << 20
# More clients than a VM host serves one disk to; and the bound keeps the server's address-space limit in range.
MAX_SHARED = 1000
# qemu's NBD server allocates a buffer per request (2 MiB from qemu-img convert, up to 32 MiB) and frees it:
# glibc hands buffers that large back to the kernel each time (mmap, munmap, then a page fault per 4 KiB on the
# next). Keeping them halved the server's system time and the export's read time (0.82 → 0.38 s for 1.4 GiB).
# Nothing else of cdisk's environment reaches the server.
_SERVER_ENV = {"PATH": "/usr/bin:/bin", **qemu_img.ONE_ARENA, "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
               "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
# The raw server as errors name it (a program of cdisk's, run by the interpreter cdisk runs on).
RAW_SERVER = "cdisk's raw NBD server"
# Formats whose blockdev options take "backing"; the others refuse the key (qemu-img's json: accepts it anyway).
_WITH_BACKING = frozenset({"qcow2", "qcow", "qed", "vmdk"})


@dataclass(frozen=True)
class Export:
    """One disk being served: its export name (the disk's path in the image) and URI."""

    name: str
    uri: str
    disk: str
    source_format: str
    virtual_size: int


@dataclass(frozen=True)
class Served:
    """What is being served and where: a Unix `socket` or a TCP `listen` address; `pid` is the process to stop."""

    uri: str
    socket: str | None
    listen: str | None
    image: str
    engine: str
    image_id: str
    exports: tuple[Export, ...]
    overlay: str | None
    pid: int


class Server:
    """A running server; `wait()` until it ends."""

    def __init__(self, served: Served, proc: subprocess.Popen[bytes], errors: processes.StderrTail,
                 name: str = SERVER) -> None:
        self.served = served
        self._proc = proc
        self._errors = errors
        self._name = name

    def wait(self) -> None:
        """Block until the server ends (SIGINT and SIGTERM interrupt this, as everywhere).

        Raises:
            ToolError: the server ended on its own.
        """
        code = self._proc.wait()
        raise ToolError(f"{self._name} stopped: {processes.last_line(self._errors.text(), code)}",
                        processes.argv_of(self._proc), code, self._errors.text())


def socket_home() -> str:
    """Where a private socket directory is made (`leftovers.runtime_dir`)."""
    return leftovers.runtime_dir()


@contextmanager
def _listening(chosen: str | None, tcp: Endpoint | None, mode: int) -> Iterator[tuple[net.socket, Endpoint]]:
    """The listening socket the server is handed, and where clients reach it: `tcp`, the socket `chosen`, or
    one in a private directory (0700) under `socket_home()`; removed when the block ends."""
    if tcp is not None:
        with nbd.tcp_listener(tcp) as sock:
            yield sock, tcp
        return
    if chosen:
        path = os.path.abspath(chosen)
        with nbd.unix_listener(path, mode) as sock:
            yield sock, Endpoint(socket=path)
        return
    home = socket_home()
    # Held under a lock for the server's life; what a killed serve left there (its server died with it: processes)
    # goes with the next serve's.
    leftovers.sweep(home, (leftovers.SERVE,))
    try:
        held, directory = leftovers.locked_dir(home, "cdisk-serve-")
    except OSError as error:
        raise UsageError(f"cannot make a socket directory in {home}: {error.strerror}; choose a --socket") from None
    try:
        path = os.path.join(directory, SOCKET_NAME)
        with nbd.unix_listener(path, mode) as sock:
            yield sock, Endpoint(socket=path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(held)


def socket_mode(text: str) -> int:
    """--socket-mode as an octal mode of at most 777.

    Raises:
        UsageError: anything else.
    """
    if not re.fullmatch(r"0?[0-7]{1,3}", text.strip()):
        raise UsageError(f"--socket-mode {text[:20]!r} is not an octal mode from 000 to 777; write e.g. 600 or 660")
    return int(text, 8)


def shared(text: str) -> int:
    """--shared as a number of clients from 1 to MAX_SHARED (each one's reads take address space of the server).

    Raises:
        UsageError: anything else.
    """
    if not re.fullmatch(r"[0-9]{1,7}", text.strip()) or not 1 <= int(text) <= MAX_SHARED:
        raise _not_shared(text)
    return int(text)


def _not_shared(text: str) -> UsageError:
    return UsageError(f"--shared {text[:20]!r} is not a number of clients from 1 to {MAX_SHARED}; write e.g. 4")


def _limits(connections: int) -> Callable[[], None]:
    space = qemu_img.INSPECT_ADDRESS_SPACE + connections * CLIENT_ADDRESS_SPACE

    def limit() -> None:
        # A server runs as long as it is asked to: no CPU bound; its address space grows with its clients.
        resource.setrlimit(resource.RLIMIT_AS, (space, space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes no file

    return limit


def _export_name(disk: OpenedDisk) -> str:
    return disk.source.image_path.lstrip("/")


def blockdev(spec: str, node_name: str) -> dict[str, Any]:
    """A `json:` spec as qemu-storage-daemon's --blockdev takes it: named, read-only, and without the
    `backing` key where the format has none (blockdev options are strict, qemu-img's json: is not).
    """
    node: dict[str, Any] = json.loads(spec.removeprefix("json:"))
    if node.get("driver") not in _WITH_BACKING:
        node.pop("backing", None)
    return {**node, "node-name": node_name, "read-only": True}


def server_argv(disks: Sequence[OpenedDisk], listening_fd: int, connections: int) -> list[str]:
    """qemu-storage-daemon's arguments: each disk a read-only export, on the socket it inherits."""
    argv = ["--nbd-server", json.dumps({"addr": {"type": "fd", "str": str(listening_fd)},
                                        "max-connections": connections})]
    for number, disk in enumerate(disks):
        node = f"disk{number}"
        argv += ["--blockdev", json.dumps(blockdev(disk.spec, node)),
                 "--export", json.dumps({"type": "nbd", "id": f"export{number}", "node-name": node,
                                         "name": _export_name(disk), "writable": False})]
    return argv


def _file_of(node: Any) -> tuple[str, int, int | None] | None:
    """The plain file a protocol node reads, where in it, and where the node's bytes end (a raw slice of a saved
    layer; None: the whole file, whose end qemu reads as zeros, as the server does)."""
    if not isinstance(node, dict):
        return None
    if node.get("driver") == "file" and set(node) == {"driver", "filename"}:
        return str(node["filename"]), 0, None
    if node.get("driver") == "raw" and set(node) <= {"driver", "file", "offset", "size"}:
        inner = _file_of(node.get("file"))
        if inner is not None and inner[1] == 0 and inner[2] is None:
            offset = int(node.get("offset", 0))
            return inner[0], offset, (offset + int(node["size"])) if "size" in node else None
    return None


def _map(disk: OpenedDisk) -> list[dict[str, Any]] | None:
    """The disk's extents as `qemu-img map` lists them; None where it cannot say (qemu-storage-daemon serves)."""
    try:
        return qemu_img.map_extents(disk.spec, disk.source.pass_fds)
    except CdiskError:
        return None


def _extents(entries: list[dict[str, Any]], base: int, size: int, end: int | None = None,
             ) -> list[tuple[int, int, int]] | None:
    """The map as (start, length, offset in the file or -1 for zeros), covering [0, size) in order; None where
    a piece has no place in the file (a compressed cluster), lies past `end` (the slice the disk is: qemu reads
    no byte after it, so neither may the server), or the map does not cover the disk."""
    extents: list[tuple[int, int, int]] = []
    at = 0
    for entry in entries:
        start, length = int(entry["start"]), int(entry["length"])
        if start != at or length <= 0:
            return None
        if entry.get("zero"):
            where = -1
        elif entry.get("data") and "offset" in entry:
            where = base + int(entry["offset"])
            if where < base or (end is not None and where + length > end):
                return None
        else:
            return None
        if extents and where < 0 and extents[-1][2] < 0:
            extents[-1] = (extents[-1][0], extents[-1][1] + length, -1)
        else:
            extents.append((start, length, where))
        at += length
    return extents if at == size else None


def served_by_file(disks: Sequence[OpenedDisk]) -> list[dict[str, Any]] | None:
    """Each disk as cdisk's own server serves it, where every one can be: raw bytes of a file (in place, a raw
    slice of a saved layer, a decompressed copy), or a qcow2 whose every cluster lies whole in the file (its
    map from qemu-img: no decoding left for the server); else None (qemu-storage-daemon serves them). The size
    is the one qemu gives the disk (a partial last sector reads as zeros)."""
    described = []
    for disk in disks:
        node = blockdev(disk.spec, "disk")
        fmt = node.pop("driver", None)
        for key in ("node-name", "read-only", "backing"):
            node.pop(key, None)
        if fmt == "raw":
            where = _file_of({"driver": "raw", **node})
            extents: list[tuple[int, int, int]] | None = []
        elif fmt == "qcow2" and set(node) == {"file"} and not disk.compressed:  # a compressed cluster: decoded
            where = _file_of(node["file"])
            entries = _map(disk) if where is not None else None
            extents = None if entries is None or where is None else _extents(entries, where[1], disk.virtual_size,
                                                                             where[2])
        else:
            return None
        if where is None or extents is None:
            return None
        described.append({"name": _export_name(disk), "file": where[0], "offset": where[1],
                          "size": disk.virtual_size, "extents": extents})
    return described


def raw_server(exports: list[dict[str, Any]], listening_fd: int, connections: int, multi_conn: bool,
               ) -> tuple[str, list[str], sandbox.View, int]:
    """The raw server's program, arguments, what the sandbox must hold besides the files it serves (the
    interpreter cdisk runs on, isolated: -I -S, no site, no environment; its standard library), and the
    descriptor it reads the exports from (a memfd; the caller closes it). `multi_conn`: a client may read an
    export over several connections (offered only where --shared allows several)."""
    program = os.path.realpath(sys.executable)
    script = os.path.realpath(raw_export.__file__)
    in_usr = os.path.commonpath([sys.base_prefix, "/usr"]) == "/usr"  # the sandbox holds /usr already
    extra = (script,) if in_usr else (sys.base_prefix, script)
    described = os.memfd_create("cdisk-exports")
    os.write(described, json.dumps(exports).encode())  # names keep undecodable bytes as \udcXX escapes
    os.lseek(described, 0, os.SEEK_SET)
    argv = ["-I", "-S", "-B", script, str(listening_fd), str(connections), "1" if multi_conn else "0",
            str(described)]
    return program, argv, sandbox.View(read_only=extra), described


def _ready(proc: subprocess.Popen[bytes], at: Endpoint, errors: processes.StderrTail, name: str = SERVER) -> None:
    """Wait until the server answers at `at` (a socket only it was handed: no other server can answer there).

    Raises:
        ToolError: the server ended first, or did not answer in time.
    """
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(f"{name} failed to start: {processes.last_line(errors.text(), proc.returncode)}; run "
                            "again with --debug for all it said, and `cdisk --version -v` for what this host lacks",
                            processes.argv_of(proc), proc.returncode, errors.text())
        if nbd.answers(at):
            return
        time.sleep(0.005)
    raise ToolError(f"{name} did not answer on {at.where()} within {READY_SECONDS:.0f} s",
                    processes.argv_of(proc), None, errors.text())


@dataclass(frozen=True)
class ServeRequest:
    """Where and how to serve: a Unix socket (`socket`: a path, or None for a private one, made with
    `socket_mode`) or TCP (`listen`: ADDR:PORT); `shared` clients per export; `every` disk under /disk/;
    `overlay`: a new qcow2 backed by the export."""

    socket: str | None = None
    listen: str | None = None
    socket_mode: int = 0o600
    shared: int = 1
    every: bool = False
    overlay: str | None = None


@contextmanager
def serving(image: ImageRequest, read: ReadRequest, progress: Progress, asked: ServeRequest,
            before: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
            ) -> Iterator[Server]:
    """Serve the image's disk (each disk under /disk/) until the block ends; yields once the server answers.
    `before` is entered once the switches are checked, before anything is opened (a pid file).

    Raises:
        CdiskError: the switches do not fit, the socket or port is taken, the image or its disk is refused (as
        by convert), the server failed to start, or the overlay cannot be made.
    """
    if not 1 <= asked.shared <= MAX_SHARED:
        raise _not_shared(str(asked.shared))
    if asked.listen is not None and asked.socket is not None:
        raise UsageError("--listen and --socket both given; serve on one of them")
    if asked.every and read.disk_path:
        raise UsageError("--all and --path both given; --all serves every disk under /disk/, --path one")
    tcp = nbd.parse_listen(asked.listen) if asked.listen is not None else None
    overlay = _plan_overlay(asked.overlay, asked.every)
    with ExitStack() as stack:
        stack.enter_context(before())
        listener, public = stack.enter_context(_listening(asked.socket, tcp, asked.socket_mode))
        disks = stack.enter_context(opened_disks(image, read, progress, asked.every))
        for disk in disks:  # a file source's blobs checked before a byte is served: one read of each
            disk.vouch()
        connections = asked.shared * len(disks)  # the daemon counts its clients across exports
        specs = [d.spec for d in disks]
        by_file = served_by_file(disks)
        extra_fds: tuple[int, ...] = ()
        if by_file is not None:
            name = RAW_SERVER
            program, args, view, described = raw_server(by_file, listener.fileno(), connections, asked.shared > 1)
            stack.callback(os.close, described)
            extra_fds = (described,)
            cmd, full = qemu_img.confined(program, "python3", args, specs, view)
        else:
            name = SERVER
            cmd, full = qemu_img.confined(SERVER, SERVER_PACKAGE, server_argv(disks, listener.fileno(), connections),
                                          specs, sandbox.View())
        proc = stack.enter_context(processes.running(
            cmd, full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(listener.fileno(), *extra_fds, *(fd for d in disks for fd in d.source.pass_fds)),
            env=_SERVER_ENV, preexec_fn=_limits(connections)))
        assert proc.stderr is not None
        errors = processes.StderrTail(proc.stderr)
        _ready(proc, public, errors, name)
        exports = tuple(Export(_export_name(d), public.uri(_export_name(d)), d.source.image_path, d.format,
                               d.virtual_size) for d in disks)
        if overlay is not None:  # last: nothing can fail after it but a signal
            _make_overlay(overlay, exports[0])
        progress.stage(f"serving {', '.join(e.disk for e in exports)} on {public.where()} by {name}")
        first = disks[0]
        yield Server(Served(exports[0].uri, public.socket, None if tcp is None else tcp.where(), image.reference,
                            first.image.engine, first.image.id, exports, overlay, os.getpid()), proc, errors, name)


def _plan_overlay(overlay: str | None, every: bool) -> str | None:
    """The overlay's absolute path, checked before anything is opened.

    Raises:
        UsageError: with --all (which disk would it overlay?).
        TargetError: the file exists, or its directory does not.
    """
    if overlay is None:
        return None
    if every:
        raise UsageError("--overlay and --all both given; an overlay backs onto one disk: choose it with --path")
    path = os.path.abspath(overlay)
    if os.path.lexists(path):
        raise TargetError(f"--overlay {path} exists; remove it, or choose another (a VM's writes are in it)")
    if not os.path.isdir(os.path.dirname(path)):
        raise TargetError(f"--overlay {path}: no such directory; create it first")
    return path


def _make_overlay(path: str, export: Export) -> None:
    """A qcow2 at `path` whose backing is the export (raw: the export is the decoded disk), written under a
    temp name and linked into place, so that `path` is whole or absent.

    Raises:
        TargetError: `path` appeared meanwhile, or cannot be written.
    """
    directory = os.path.dirname(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=".cdisk-overlay-", dir=directory)
    except OSError as error:
        raise TargetError(f"cannot write --overlay {path}: {error.strerror}; choose another place") from None
    os.fchmod(fd, new_file_mode())  # as any new file, not mkstemp's 0600
    os.close(fd)
    try:
        qemu_img.create_overlay(temp, export.uri, export.virtual_size)
        os.link(temp, path)
    except FileExistsError:
        raise TargetError(f"--overlay {path} exists; remove it, or choose another") from None
    except OSError as error:
        raise TargetError(f"cannot write --overlay {path}: {error.strerror}; choose another place") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def stop(socket_path: str) -> int:
    """Stop the `cdisk serve` that serves on `socket_path`, and wait until it has cleaned up; its pid.

    The server is found through the kernel, never a file the served image could have written: the socket's
    listener (the daemon, which took the socket cdisk made), then up through its sandbox (bwrap) to cdisk.

    Raises:
        UsageError: nothing serves there, or what listens there is not cdisk's.
        ToolError: it did not stop in time.
    """
    listener = nbd.listener(socket_path)
    try:
        served_by = nbd.pid_of(listener)
        pid = _parent(served_by)
        while _is_sandbox(pid):
            pid = _parent(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            raise UsageError(f"the server on {socket_path} is gone; nothing to stop") from None
        # Still the listener's ancestor once held: no pid of the walk was reused meanwhile.
        if nbd.pid_of(listener) == 0 or not _is_cdisk_serve(pid):
            os.close(pidfd)
            raise UsageError(f"{socket_path} is served by {_comm(served_by) or 'a process that has ended'} (pid "
                             f"{served_by}), not by cdisk serve; stop it yourself")
    finally:
        os.close(listener)
    try:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return pid  # it ended meanwhile: stopped all the same
        except PermissionError:
            raise UsageError(f"cdisk serve on {socket_path} (pid {pid}) belongs to another user; stop it as "
                             "that user or as root") from None
        ended = select.poll()
        ended.register(pidfd, select.POLLIN)
        if not ended.poll(STOP_SECONDS * 1000):
            raise ToolError(f"cdisk serve on {socket_path} (pid {pid}) did not stop within {STOP_SECONDS:.0f} s; "
                            f"kill it (kill -9 {pid}) if it hangs")
    finally:
        os.close(pidfd)
    return pid


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_sandbox(pid: int) -> bool:
    """Whether `pid` runs bubblewrap (its executable, not a name any process may give itself)."""
    bwrap = shutil.which(sandbox.BWRAP)
    try:
        return bwrap is not None and os.readlink(f"/proc/{pid}/exe") == os.path.realpath(bwrap)
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_cdisk_serve(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in args and any(os.path.basename(a) == b"cdisk" for a in args)
