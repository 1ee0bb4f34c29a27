"""`cdisk serve`: the image's disk as a read-only NBD export, read in place — no conversion at all.

The server serves the very `json:` spec convert reads (a raw slice of a saved layer, the `/dev/fd/N` file in
place, a decompressed copy), its format explicit and `"backing": null`, confined to a sandbox that holds the
disk and the socket's private directory only. The export is the disk as the format decodes it (raw bytes): a
client never parses the image's qcow2 (or vmdk, …) itself, the sandboxed server does. The image stays held
(descriptors, a mount, a saved copy) the whole time; when the block ends the server is stopped, the socket and
its directory removed — also with a client connected.

One disk is served by qemu-nbd (qemu-utils, which cdisk needs anyway); several (`--all`) by one
qemu-storage-daemon, the only qemu tool that serves several exports on one socket, so that a client lists
them all (`nbdinfo --list`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cdisk.core import nbd, processes, qemu_img, sandbox
from cdisk.core.errors import TargetError, ToolError, UsageError
from cdisk.core.job import ImageRequest, ReadRequest
from cdisk.core.nbd import Endpoint
from cdisk.core.pipeline import OpenedDisk, opened_disk, opened_disks
from cdisk.core.progress import Progress

# How long a server may take to listen; qemu-nbd takes ~10 ms here.
READY_SECONDS = 10.0
# How long `--stop` waits for the server to end (it stops its qemu-nbd, then removes what it made).
STOP_SECONDS = 30.0
SOCKET_NAME = "nbd.sock"
# qemu's NBD server allocates a buffer per request (2 MiB from qemu-img convert, up to 32 MiB) and frees it:
# glibc hands buffers that large back to the kernel each time (mmap, munmap, then a page fault per 4 KiB on the
# next). Keeping them halved the server's system time and the export's read time (0.82 → 0.38 s for 1.4 GiB).
# The address-space limit bounds what is kept.
_SERVER_MALLOC = {**qemu_img.ONE_ARENA, "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
                  "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
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

    def __init__(self, served: Served, tool: str, proc: subprocess.Popen[bytes], errors: processes.StderrTail,
                 ) -> None:
        self.served = served
        self._tool = tool
        self._proc = proc
        self._errors = errors

    def wait(self) -> None:
        """Block until the server ends (SIGINT and SIGTERM interrupt this, as everywhere).

        Raises:
            ToolError: the server ended on its own.
        """
        code = self._proc.wait()
        raise ToolError(f"{self._tool} stopped: {processes.last_line(self._errors.text(), code)}",
                        processes.argv_of(self._proc), code, self._errors.text())


def socket_home() -> str:
    """Where a private socket directory is made: $XDG_RUNTIME_DIR (the user's own tmpfs), else /run/cdisk as
    root, else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return runtime
    if os.geteuid() == 0:
        os.makedirs("/run/cdisk", mode=0o755, exist_ok=True)
        return "/run/cdisk"
    return tempfile.gettempdir()


@contextmanager
def _socket_place(chosen: str | None) -> Iterator[tuple[str, str]]:
    """(where the server listens, where clients connect). The server only ever sees a private directory (0700)
    of its own, made beside the socket asked for (`chosen`, which must not exist) or under `socket_home()`; a
    chosen socket is moved to its place once listening. Everything is removed when the block ends.
    """
    path = os.path.abspath(chosen) if chosen else None
    if path is not None and os.path.lexists(path):
        raise UsageError(f"{path} exists; choose another --socket, or stop what serves there")
    parent = os.path.dirname(path) if path else socket_home()
    try:
        directory = tempfile.mkdtemp(prefix=".cdisk-serve-" if path else "cdisk-serve-", dir=parent)
    except OSError as error:
        raise UsageError(f"cannot make a socket directory in {parent}: {error.strerror}; choose another "
                         "--socket") from None
    try:
        yield os.path.join(directory, SOCKET_NAME), path or os.path.join(directory, SOCKET_NAME)
    finally:
        if path is not None and os.path.lexists(path):
            os.unlink(path)
        shutil.rmtree(directory, ignore_errors=True)


def _limit_serving() -> None:
    # The memory bound of every qemu tool that opens an image; a server runs as long as it is asked to, so no
    # CPU bound.
    resource.setrlimit(resource.RLIMIT_AS, (qemu_img.INSPECT_ADDRESS_SPACE, qemu_img.INSPECT_ADDRESS_SPACE))


def _export_name(disk: OpenedDisk) -> str:
    return disk.source.image_path.lstrip("/")


def _qemu_nbd(disk: OpenedDisk, at: Endpoint, shared: int) -> tuple[str, str, list[str]]:
    where = [f"--socket={at.socket}"] if at.socket else [f"--bind={at.host}", f"--port={at.port}"]
    return "qemu-nbd", "qemu-utils", ["--read-only", "--persistent", f"--shared={shared}", *where,
                                      f"--export-name={_export_name(disk)}", disk.spec]


def blockdev(spec: str, node_name: str) -> dict[str, Any]:
    """A `json:` spec as qemu-storage-daemon's --blockdev takes it: named, read-only, and without the
    `backing` key where the format has none (blockdev options are strict, qemu-img's json: is not).
    """
    node: dict[str, Any] = json.loads(spec.removeprefix("json:"))
    if node.get("driver") not in _WITH_BACKING:
        node.pop("backing", None)
    return {**node, "node-name": node_name, "read-only": True}


def _storage_daemon(disks: Sequence[OpenedDisk], at: Endpoint, shared: int) -> tuple[str, str, list[str]]:
    address = {"type": "unix", "path": at.socket} if at.socket else \
        {"type": "inet", "host": at.host, "port": str(at.port)}
    argv = ["--nbd-server", json.dumps({"addr": address, "max-connections": shared})]
    for number, disk in enumerate(disks):
        node = f"disk{number}"
        argv += ["--blockdev", json.dumps(blockdev(disk.spec, node)),
                 "--export", json.dumps({"type": "nbd", "id": f"export{number}", "node-name": node,
                                         "name": _export_name(disk), "writable": False})]
    return "qemu-storage-daemon", "qemu-system-common", argv


def _ready(tool: str, proc: subprocess.Popen[bytes], at: Endpoint, errors: processes.StderrTail) -> None:
    """Wait until the server answers at `at`.

    Raises:
        ToolError: the server ended first, or did not answer in time.
    """
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(f"{tool} failed: {processes.last_line(errors.text(), proc.returncode)}",
                            processes.argv_of(proc), proc.returncode, errors.text())
        if (at.socket is None or os.path.exists(at.socket)) and nbd.answers(at):
            return
        time.sleep(0.005)
    raise ToolError(f"{tool} did not answer on {at.where()} within {READY_SECONDS:.0f} s",
                    processes.argv_of(proc), None, errors.text())


def _opened(image: ImageRequest, read: ReadRequest, every: bool, progress: Progress,
            ) -> contextlib.AbstractContextManager[list[OpenedDisk]]:
    if every:
        return opened_disks(image, read, progress)

    @contextmanager
    def one() -> Iterator[list[OpenedDisk]]:
        with opened_disk(image, read, None, progress) as disk:
            yield [disk]

    return one()


@contextmanager
def serving(image: ImageRequest, read: ReadRequest, progress: Progress, socket_path: str | None = None,
            listen: str | None = None, shared: int = 1, every: bool = False, overlay: str | None = None,
            ) -> Iterator[Server]:
    """Serve the image's disk (`every`: each disk under /disk/) until the block ends; yields once the server
    answers. `listen` (ADDR:PORT) serves on TCP instead of a Unix socket; `overlay` is a new qcow2 file backed
    by the export.

    Raises:
        CdiskError: the switches do not fit, the image or its disk is refused (as by convert), the server
        failed to start, or `overlay` cannot be made.
    """
    if shared < 1:
        raise UsageError(f"--shared {shared}: at least one client must be allowed")
    if listen is not None and socket_path is not None:
        raise UsageError("--listen and --socket both given; serve on one of them")
    if every and read.disk_path:
        raise UsageError("--all and --path both given; --all serves every disk under /disk/, --path one")
    tcp = nbd.parse_listen(listen) if listen is not None else None
    planned_overlay = _plan_overlay(overlay, every)
    with ExitStack() as stack:
        disks = stack.enter_context(_opened(image, read, every, progress))
        if tcp is None:
            listening, path = stack.enter_context(_socket_place(socket_path))
            at, public = Endpoint(socket=listening), Endpoint(socket=path)
            view = sandbox.View(writable=(os.path.dirname(listening),))
        else:
            at = public = tcp
            view = sandbox.View(network=True)
        tool, package, argv = _qemu_nbd(disks[0], at, shared) if len(disks) == 1 else \
            _storage_daemon(disks, at, shared)
        cmd, full = qemu_img.confined(tool, package, argv, [d.spec for d in disks], view)
        proc = stack.enter_context(processes.running(
            cmd, full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=tuple(fd for d in disks for fd in d.source.pass_fds),
            env={**os.environ, **_SERVER_MALLOC}, preexec_fn=_limit_serving))
        assert proc.stderr is not None
        errors = processes.StderrTail(proc.stderr)
        _ready(tool, proc, at, errors)
        if at.socket is not None and at != public:
            os.rename(at.socket, str(public.socket))
        exports = tuple(Export(_export_name(d), public.uri(_export_name(d)), d.source.image_path, d.format,
                               d.virtual_size) for d in disks)
        if planned_overlay is not None:
            _make_overlay(planned_overlay, exports[0])
        first = disks[0]
        progress.stage(f"serving {', '.join(e.disk for e in exports)} on {public.where()}")
        yield Server(Served(exports[0].uri, public.socket, None if tcp is None else tcp.where(), image.reference,
                            first.image.engine, first.image.id, exports, planned_overlay, os.getpid()),
                     tool, proc, errors)


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

    The server is found through the kernel (the pid that listens on the socket, then up through its sandbox),
    never through a file the served image could have written.

    Raises:
        UsageError: nothing serves there, or what serves there is not `cdisk serve`.
        ToolError: it did not stop in time.
    """
    listener = nbd.listener_pid(socket_path)
    pid = _parent(listener)
    while _comm(pid) == "bwrap":
        pid = _parent(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        raise UsageError(f"the server on {socket_path} is gone; nothing to stop") from None
    try:
        if not _is_cdisk_serve(pid):
            raise UsageError(f"{socket_path} is served by {_comm(listener) or 'an unknown process'} (pid "
                             f"{listener}), not by cdisk serve; stop it yourself")
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
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


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_cdisk_serve(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in args and any(os.path.basename(a) == b"cdisk" for a in args)
