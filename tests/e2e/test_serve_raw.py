"""`cdisk serve` of a raw disk, or a qcow2 whose clusters lie whole in the file: served by cdisk's own sendfile
server (core/qemu/raw_export.py) in the sandbox, read with the real qemu-img and nbdcopy; a compressed qcow2 (or
any other format) stays with qemu-storage-daemon. Several connections may
read either export at once (NBD multi-conn).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_serve import reads_as, served, server_children
from tests.helpers import Images, cdisk
from tests.images import sh

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "qemu-storage-daemon", "bwrap")


def _server_pid(serve_pid: int) -> int:
    """The server a `cdisk serve` runs, inside its sandbox (bwrap, then bwrap's children)."""
    [pid] = server_children(serve_pid)
    while children := server_children(pid):
        pid = children[0]
    return pid


def _server_argv(serve_pid: int) -> list[str]:
    return Path(f"/proc/{_server_pid(serve_pid)}/cmdline").read_bytes().decode(errors="replace").split("\0")


def _is_raw_server(argv: list[str]) -> bool:
    return any(a.endswith("raw_export.py") for a in argv)


@pytest.mark.parametrize("method", ["auto", "save"])
def test_a_raw_disk_is_served_by_the_sendfile_server(images: Images, method: str) -> None:
    """In place (auto) or a raw slice of a saved layer (save): cdisk's server, the bytes as the disk's; -v says
    which server serves. A layer's file has no holes: the server finds the disk's runs of zeros (in 64 KiB blocks)
    and block status reports them as zeros, so qemu-img skips them rather than read them through the socket."""
    disk = images.disk("disk.raw", "raw", "8M")
    name = images.build({"disk.raw": disk})
    with served("-v", "--method", method, name) as (proc, info):
        assert _is_raw_server(_server_argv(proc.pid))
        assert reads_as(info["uri"], disk, "raw")
        [export] = info["exports"]  # type: ignore[misc]
        assert export["source_format"] == "raw" and export["virtual_size"] == 8 << 20
        mapped = json.loads(sh("qemu-img", "map", "--output=json", "-f", "raw", str(info["uri"])).stdout)
        assert [(e["start"], e["length"], e["zero"]) for e in mapped] == [
            (0, 64 << 10, False), (64 << 10, (1 << 20) - (64 << 10), True), (1 << 20, 64 << 10, False),
            ((1 << 20) + (64 << 10), (2 << 20) - (64 << 10), True), (3 << 20, 128 << 10, False),
            ((3 << 20) + (128 << 10), (5 << 20) - (128 << 10), True)]
        assert " by cdisk's raw NBD server" in _stopped(proc)


def _stopped(proc: subprocess.Popen[str]) -> str:
    """What a serve said on stderr, once stopped (SIGTERM)."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[1]


def test_a_qcow2_disk_is_served_by_its_map(images: Images, tmp_path: Path) -> None:
    """Every cluster whole in the file: cdisk's server, by qemu-img's map (data by sendfile, zeros as holes that
    block status reports, so a client skips them)."""
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served(name) as (proc, info):
        assert _is_raw_server(_server_argv(proc.pid))
        assert reads_as(info["uri"], disk, "qcow2")
        mapped = json.loads(sh("qemu-img", "map", "--output=json", "-f", "raw", str(info["uri"])).stdout)
        assert [(e["start"], e["data"]) for e in mapped][:3] == [(0, True), (64 << 10, False), (1 << 20, True)]


def test_a_compressed_qcow2_stays_with_qemu_storage_daemon(images: Images, tmp_path: Path) -> None:
    """A compressed cluster has no place in the file to send from: qemu decodes it."""
    disk = tmp_path / "compressed.qcow2"
    sh("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", images.disk(), disk)
    name = images.build({"disk.qcow2": disk})
    with served("-v", name) as (proc, info):
        argv = _server_argv(proc.pid)
        assert not _is_raw_server(argv) and argv[0].endswith("qemu-storage-daemon")
        assert reads_as(info["uri"], disk, "qcow2")
        assert " by qemu-storage-daemon" in _stopped(proc)


def test_a_raw_disk_of_a_partial_sector_reads_as_qemu_reads_it(images: Images, tmp_path: Path) -> None:
    """1000 bytes: qemu makes it 1024 (a whole sector), the last 24 zeros; the export says and reads the same."""
    disk = tmp_path / "odd.raw"
    disk.write_bytes(bytes(range(250)) * 4)
    name = images.build({"disk.raw": disk})
    with served(name) as (proc, info):
        assert _is_raw_server(_server_argv(proc.pid))
        size = json.loads(sh("qemu-img", "info", "--output=json", "-f", "raw", str(info["uri"])).stdout)
        assert size["virtual-size"] == 1024
        out = tmp_path / "read.raw"
        sh("qemu-img", "convert", "-f", "raw", "-O", "raw", str(info["uri"]), out)
        assert out.read_bytes() == disk.read_bytes() + bytes(24)


def test_all_serves_raw_disks_on_one_socket(images: Images) -> None:
    first, second = images.disk("a.raw", "raw", "4M"), images.disk("b.raw", "raw", "6M", 0x5C)
    name = images.build({"a.raw": first, "b.raw": second})
    with served("--all", name) as (proc, info):
        assert _is_raw_server(_server_argv(proc.pid))
        exports = {e["name"]: e["uri"] for e in info["exports"]}  # type: ignore[attr-defined]
        assert reads_as(exports["disk/a.raw"], first, "raw") and reads_as(exports["disk/b.raw"], second, "raw")


@pytest.mark.needs("nbdinfo")  # nbdcopy is in the same package (libnbd-bin)
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_multi_conn_is_offered_and_honoured(images: Images, tmp_path: Path, fmt: str) -> None:
    """The export says several connections may read it (can_multi_conn), and nbdcopy's four read it whole."""
    disk = images.disk(f"disk.{fmt}", fmt, "8M")
    name = images.build({f"disk.{fmt}": disk})
    with served("--shared", "4", name) as (_, info):
        [export] = json.loads(sh("nbdinfo", "--json", str(info["uri"])).stdout)["exports"]
        assert export["can_multi_conn"] is True and export["is_read_only"] is True
        out = tmp_path / "copied.raw"
        sh("nbdcopy", "--connections", "4", str(info["uri"]), out)
        assert sh("qemu-img", "compare", "-f", "raw", "-F", fmt, out, disk, check=False).returncode == 0


@pytest.mark.needs("nbdinfo")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_one_client_at_a_time_offers_no_multi_conn(images: Images, tmp_path: Path, fmt: str) -> None:
    """The default --shared 1: no multi-conn (a second connection would wait to be accepted), so nbdcopy reads
    over one connection and ends."""
    disk = images.disk(f"disk.{fmt}", fmt, "8M")
    name = images.build({f"disk.{fmt}": disk})
    with served(name) as (_, info):
        [export] = json.loads(sh("nbdinfo", "--json", str(info["uri"])).stdout)["exports"]
        assert export["can_multi_conn"] is False
        out = tmp_path / "copied.raw"
        sh("timeout", "60", "nbdcopy", str(info["uri"]), out)
        assert sh("qemu-img", "compare", "-f", "raw", "-F", fmt, out, disk, check=False).returncode == 0


def test_detach_then_stop_a_raw_server(images: Images, tmp_path: Path) -> None:
    """--stop finds the raw server by the socket's credentials (it listens again on the socket it is handed)."""
    disk = images.disk("disk.raw", "raw", "4M")
    name = images.build({"disk.raw": disk})
    path = tmp_path / "vm.sock"
    started = cdisk("serve", "--detach", "--json", "--socket", path, name)
    assert started.code == 0, started.err
    info = json.loads(started.out)
    assert reads_as(info["uri"], disk, "raw")
    stopped = cdisk("serve", "--stop", path)
    assert stopped.code == 0, stopped.err
    assert not path.exists()


def test_the_raw_export_refuses_writes(images: Images) -> None:
    disk = images.disk("disk.raw", "raw", "4M")
    name = images.build({"disk.raw": disk})
    with served(name) as (_, info):
        wrote = sh("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", str(info["uri"]), check=False)
        assert wrote.returncode != 0
        assert reads_as(info["uri"], disk, "raw")


def test_a_killed_serve_takes_its_raw_server_with_it(images: Images) -> None:
    name = images.build({"disk.raw": images.disk("disk.raw", "raw", "4M")})
    with served(name) as (proc, _):
        server = _server_pid(proc.pid)
        assert _is_raw_server(_server_argv(proc.pid))
        proc.kill()
        deadline = time.monotonic() + 30
        while _still(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _still(server)


def _still(pid: int) -> bool:
    """Whether the raw server `pid` still runs (not a zombie, not a new process of that pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"raw_export.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_refused_raw_disk_is_refused_as_by_convert(images: Images, tmp_path: Path) -> None:
    """A 'raw' file that is a qcow2 header naming a backing file: refused before anything is served."""
    disk = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", disk, "8M")
    name = images.build({"disk.raw": disk})
    refused = cdisk("serve", "-q", name)
    converted = cdisk("convert", "-q", name, tmp_path / "out.raw")
    assert refused.code == converted.code != 0 and refused.err == converted.err
