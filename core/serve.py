"""`cdisk serve`: the image's disk as a read-only NBD export, read in place — no conversion at all.

qemu-nbd serves the very `json:` spec convert reads (a raw slice of a saved layer, the `/dev/fd/N` file in
place, a decompressed copy), its format explicit and `"backing": null`, confined to a sandbox that holds the
disk and the socket's private directory only. The export is the disk as the format decodes it (raw bytes): a
client never parses the image's qcow2 (or vmdk, …) itself, the sandboxed qemu-nbd does. The image stays held
(descriptors, a mount, a saved copy) the whole time; when the block ends qemu-nbd is stopped, the socket and
its directory removed — also with a client connected.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import quote

from cdisk.core import processes, qemu_img, sandbox
from cdisk.core.errors import ToolError, UsageError
from cdisk.core.job import ImageRequest, ReadRequest
from cdisk.core.pipeline import opened_disk
from cdisk.core.progress import Progress

# How long qemu-nbd may take to listen; it takes ~20 ms here.
READY_SECONDS = 10.0
SOCKET_NAME = "nbd.sock"


@dataclass(frozen=True)
class Served:
    """What is being served: the URI a client opens, and where."""

    uri: str
    socket: str
    export: str
    image: str
    engine: str
    image_id: str
    disk: str
    source_format: str
    virtual_size: int
    pid: int


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
    """(where qemu-nbd listens, where clients connect). qemu-nbd only ever sees a private directory (0700) of
    its own, made beside the socket asked for (`chosen`, which must not exist) or under `socket_home()`; a
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


def nbd_uri(socket_path: str, export: str) -> str:
    """The NBD URI of `export` on a Unix socket (nbd+unix:///EXPORT?socket=PATH)."""
    return f"nbd+unix:///{quote(export)}?socket={quote(socket_path)}"


def _ready(proc: subprocess.Popen[bytes], path: str) -> None:
    """Wait until qemu-nbd accepts connections on `path`.

    Raises:
        ToolError: qemu-nbd ended first, or did not listen in time.
    """
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ToolError(f"qemu-nbd failed: {processes.last_line(err, proc.returncode)}",
                            [str(a) for a in proc.args], proc.returncode, err)  # type: ignore[union-attr]
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                    return
                except OSError:
                    pass
        time.sleep(0.005)
    raise ToolError(f"qemu-nbd did not listen on {path} within {READY_SECONDS:.0f} s", [], None, "")


@contextmanager
def serving(image: ImageRequest, read: ReadRequest, socket_path: str | None, shared: int,
            progress: Progress) -> Iterator[Served]:
    """Serve the image's disk until the block ends; yields once qemu-nbd accepts connections."""
    if shared < 1:
        raise UsageError(f"--shared {shared}: at least one client must be allowed")
    with ExitStack() as stack:
        disk = stack.enter_context(opened_disk(image, read, None, progress))
        listening, path = stack.enter_context(_socket_place(socket_path))
        export = disk.source.image_path.lstrip("/")
        argv = ["--read-only", "--persistent", f"--shared={shared}", f"--socket={listening}",
                f"--export-name={export}", disk.spec]
        cmd, full = qemu_img.confined("qemu-nbd", argv, disk.spec,
                                      sandbox.View(writable=(os.path.dirname(listening),)))
        proc = stack.enter_context(processes.running(cmd, full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                     pass_fds=tuple(disk.source.pass_fds),
                                                     env={**os.environ, **qemu_img.ONE_ARENA},
                                                     preexec_fn=_limit_serving))
        _ready(proc, listening)
        if listening != path:
            os.rename(listening, path)
        progress.stage(f"serving {disk.source.image_path} on {path}")
        yield Served(nbd_uri(path, export), path, export, image.reference, disk.image.engine, disk.image.id,
                     disk.source.image_path, disk.format, disk.virtual_size, proc.pid)
