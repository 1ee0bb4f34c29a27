"""qemu-img confined to one job's files: a private mount namespace holding /usr, the disk it reads and the
file it writes — no other host file, no network, no other process.

Why: a disk image can name other files (a qcow2 backing or data file, vmdk extents, a URL) and qemu-img
opens them. The header checks in `disk.formats` refuse the cases known today; the sandbox makes every other one
name nothing, by construction (the libvirt sVirt idea: the process can reach the one image it was given).

bubblewrap builds the namespace, as flatpak uses it. As root (also the root of rootless podman's user
namespace, inside `podman unshare`), bwrap keeps uid 0 but every capability is dropped except
CAP_DAC_OVERRIDE, so a disk file that only its owner (107) may read is still readable — and only the files
bound here are there to read. As any other user, bwrap makes a user namespace of its own.

Where no namespace can be made (no bwrap, user namespaces disabled), `unavailable()` says why and callers
accept only formats that name no other file once the header checks pass (raw, qcow2).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from cdisk.core import processes

BWRAP = processes.GUARDED
# The top-level entries a merged-/usr Debian (and most distributions) needs to run /usr/bin programs.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class View:
    """The host files one confined run may see, each at its own path.

    `read_only` files (or block devices) are bound read-only; `writable` ones read-write (the target: the
    temp file, never its directory, or a block device). Inherited descriptors (`/dev/fd/N`) need no bind.
    """

    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def __add__(self, other: View) -> View:
        return View(self.read_only + other.read_only, self.writable + other.writable)


SANDBOX_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _binds(paths: Iterable[str], writable: bool) -> list[str]:
    argv: list[str] = []
    for path in paths:
        if _is_block(path):
            # A plain bind is mounted nodev, and so is a remount read-only: a device (the operator's target,
            # never the image's) is bound as it is, and qemu-img opens it read-only where it only reads.
            argv += ["--dev-bind", path, path]
        else:
            argv += ["--bind" if writable else "--ro-bind", path, path]
    return argv


def _root_skeleton() -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in _ROOT_LINKS:
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    # Without the cache the loader still finds the libraries, only by searching its default paths.
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return argv


def _namespaces() -> list[str]:
    common = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        # Root, or root of rootless podman's user namespace (inside `podman unshare`): bwrap may build the
        # namespaces itself, and keeps the one capability that reads a disk only its owner may read.
        return [*common, "--cap-drop", "ALL", "--cap-add", "CAP_DAC_OVERRIDE"]
    return ["--unshare-user", *common]


def _prefix() -> list[str]:
    bwrap = shutil.which(BWRAP)
    assert bwrap is not None
    # /proc (of the new pid namespace) is there for /dev/fd/N, the descriptors the disk is passed through.
    # PATH names only what the view holds: the host's may name directories the sandbox has not.
    return [bwrap, *_namespaces(), *_root_skeleton(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--chdir", "/", "--setenv", "PATH", SANDBOX_PATH]


def confine(argv: list[str], view: View) -> list[str]:
    """`argv` (an absolute program path first) run inside a sandbox that holds only `view`'s files."""
    return [*_prefix(), *_binds(view.read_only, False), *_binds(view.writable, True), "--", *argv]


_started: list[subprocess.Popen[bytes]] = []


def start_probe() -> None:
    """Start asking whether a sandbox can be made, in the background: `unavailable()` then collects the answer,
    and the probe's ~5 ms overlap whatever the caller does meanwhile (the image lookup).
    """
    if _started or unavailable.cache_info().currsize or shutil.which(BWRAP) is None:
        return
    true = shutil.which("true", path="/usr/bin:/bin") or "/usr/bin/true"
    with contextlib.suppress(OSError):  # unavailable() asks again, and says why
        # In the guard's process group, as every bwrap (processes.spawn): a SIGKILL of cdisk while the sandbox is
        # being built must not leave its pid 1 behind.
        _started.append(subprocess.Popen(confine([true], View()), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         process_group=processes.guard_group()))
        # A run that ends before it needs the answer (the image was not found, say) still reaps the probe.
        atexit.register(reap_probe)


def _stop(probe: subprocess.Popen[bytes]) -> None:
    """Kill and reap the probe without reading its stderr to the end: the sandbox's own init (pid 1 of its pid
    namespace) may hold the pipe open until the guard kills it as cdisk ends (processes.spawn), and cdisk must not
    wait on it at exit (it did, until a test's 120 s ran out)."""
    probe.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        probe.wait(timeout=5)
    if probe.stderr is not None:
        probe.stderr.close()


def reap_probe() -> None:
    """Stop the probe if it still runs (a run that ended before it needed the answer: a usage error, say). A
    probe stopped so says nothing of the sandbox: unless its answer was taken, a later question starts another."""
    stopped = False
    for probe in _started:
        if probe.returncode is None:
            _stop(probe)
            stopped = True
    if stopped and not unavailable.cache_info().currsize:
        _started.clear()


@functools.cache
def unavailable() -> str | None:
    """Why no sandbox can be made here, or None when it can (asked once per process, ~5 ms)."""
    if shutil.which(BWRAP) is None:
        return "bubblewrap (bwrap) is not installed"
    start_probe()
    if not _started:
        return f"bwrap cannot run (it could not be started as {shutil.which(BWRAP)})"
    probe = _started[0]
    try:
        _, err = probe.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        _stop(probe)
        return "bwrap cannot run (its probe ran past 30 s)"
    if probe.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot make a namespace here ({lines[-1] if lines else f'exit code {probe.returncode}'})"
    return None
