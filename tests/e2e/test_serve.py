"""`cdisk serve`: the image's disk as a read-only NBD export, checked with the real qemu-img reading the URI;
stopped by SIGINT or SIGTERM with a client connected, leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Images, Run, assert_one_line_error, cdisk
from tests.images import make_disk, sh
from tests.registries import free_port

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "qemu-storage-daemon", "bwrap")


@contextmanager
def served(*args: str | Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    """`cdisk serve --json ARGS` running, with what it printed once ready; stopped (SIGTERM) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "serve", "--json", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1]
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def reads_as(uri: object, disk: Path, fmt: str) -> bool:
    """Whether the export reads exactly as `disk` (the export is the decoded disk: raw)."""
    return sh("qemu-img", "compare", "-f", "raw", "-F", fmt, str(uri), disk, check=False).returncode == 0


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for a parent that does not reap, as a detached server's
    may here, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def server_children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_the_export_reads_as_the_disk(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served(name) as (proc, info):
        assert str(info["uri"]).startswith("nbd+unix:///disk/disk.qcow2?socket=")
        [export] = info["exports"]  # type: ignore[misc]
        assert (export["name"], export["disk"], export["source_format"]) == ("disk/disk.qcow2", "/disk/disk.qcow2",
                                                                             "qcow2")
        assert export["uri"] == info["uri"] and info["pid"] == proc.pid  # the process to stop
        assert reads_as(info["uri"], disk, "qcow2")
        # read-only: a write through the export is refused
        wrote = sh("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", str(info["uri"]), check=False)
        assert wrote.returncode != 0 or "failed" in wrote.stdout + wrote.stderr
        assert reads_as(info["uri"], disk, "qcow2")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_with_a_client_connected_stops_it_and_leaves_nothing(images: Images, signum: int) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    with served(name) as (proc, info):
        path = str(info["socket"])
        children = server_children(proc.pid)
        assert children, "the server runs as cdisk's child"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not os.path.exists(os.path.dirname(path)), "the socket's private directory is removed"
        assert all(_parent(child) != proc.pid and not Path(f"/proc/{child}").exists() for child in children)


def test_a_socket_of_ones_choosing(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    path = tmp_path / "vm.sock"
    with served("--socket", path, name) as (_, info):
        assert info["socket"] == str(path) and path.is_socket()
        assert reads_as(info["uri"], disk, "qcow2")
        taken = cdisk("serve", "-q", "--socket", path, name)
        assert_one_line_error(taken, 2, "exists")
    assert list(tmp_path.iterdir()) == [], "the socket and the private directory beside it are removed"


def test_two_clients_with_shared(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served("--shared", "2", name) as (_, info):
        first = subprocess.Popen(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(info["uri"]), disk],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert reads_as(info["uri"], disk, "qcow2")
        assert first.wait(timeout=60) == 0


def test_refusals_are_those_of_convert(images: Images, tmp_path: Path) -> None:
    disk = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", disk, "8M")
    name = images.build({"disk.qcow2": disk})
    refused = cdisk("serve", "-q", name)
    converted = cdisk("convert", "-q", name, tmp_path / "out.raw")
    assert refused.code == converted.code == 5
    assert refused.err == converted.err and "backing file" in refused.err


def exports_listed(socket_path: object) -> list[str]:
    """The export names `nbdinfo --list` shows on a server."""
    listed = sh("nbdinfo", "--list", "--json", f"nbd+unix://?socket={socket_path}")
    return [export["export-name"] for export in json.loads(listed.stdout)["exports"]]


@pytest.mark.needs("nbdinfo")
@pytest.mark.parametrize("method", ["layers", "save"])
def test_all_serves_every_disk_on_one_socket(images: Images, tmp_path: Path, method: str) -> None:
    first = images.disk("a.qcow2")
    second = images.disk("b.raw", "raw", "4M", 0xCD)
    name = images.build({"a.qcow2": first, "b.raw": second})
    with served("--all", "--method", method, "--shared", "2", name) as (_, info):
        assert exports_listed(info["socket"]) == ["disk/a.qcow2", "disk/b.raw"]
        exports = {e["name"]: e for e in info["exports"]}  # type: ignore[attr-defined]
        assert reads_as(exports["disk/a.qcow2"]["uri"], first, "qcow2")
        assert reads_as(exports["disk/b.raw"]["uri"], second, "raw")
        assert not reads_as(exports["disk/b.raw"]["uri"], first, "qcow2")
        wrote = sh("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", str(exports["disk/b.raw"]["uri"]), check=False)
        assert wrote.returncode != 0 or "failed" in wrote.stdout + wrote.stderr
    assert not os.path.exists(os.path.dirname(str(info["socket"])))


def test_all_refuses_what_convert_refuses(images: Images, tmp_path: Path) -> None:
    backed = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", backed, "8M")
    name = images.build({"a.qcow2": images.disk(), "b.qcow2": backed})
    refused = cdisk("serve", "-q", "--all", name)
    assert_one_line_error(refused, 5, "backing file")
    assert "/disk/b.qcow2" in refused.err
    both = cdisk("serve", "-q", "--all", "--path", "/disk/a.qcow2", name)
    assert both.code == 2 and "--all and --path" in both.err


def test_an_overlay_takes_the_writes_and_the_base_stays(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    overlay = tmp_path / "vm.qcow2"
    with served("--shared", "2", "--overlay", overlay, name) as (_, info):
        assert info["overlay"] == str(overlay)
        described = json.loads(sh("qemu-img", "info", "--output=json", "-U", overlay).stdout)
        assert (described["format"], described["backing-filename"], described["backing-filename-format"]) == \
            ("qcow2", info["uri"], "raw")
        assert described["virtual-size"] == 8 << 20
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", overlay)
        read = sh("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 0 64k", "-c", "read -P 0xab 1M 4k", overlay)
        assert "Pattern verification failed" not in read.stdout + read.stderr
        assert reads_as(info["uri"], disk, "qcow2"), "the export still reads as the image's disk"
        again = cdisk("serve", "-q", "--overlay", overlay, name)
        assert again.code == 6 and "exists" in again.err
    assert overlay.exists(), "the overlay holds the VM's writes: it stays"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.qcow2"], "no temp file beside it"
    with_all = cdisk("serve", "-q", "--all", "--overlay", tmp_path / "other.qcow2", name)
    assert with_all.code == 2 and not (tmp_path / "other.qcow2").exists()


def test_detach_then_stop(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    path = tmp_path / "vm.sock"
    pid_file = tmp_path / "serve.pid"
    started = cdisk("serve", "-q", "--json", "--detach", "--pid-file", pid_file, "--socket", path, name)
    try:
        assert started.code == 0, started.err
        info = json.loads(started.out)
        pid = int(pid_file.read_text())
        assert info["pid"] == pid and Path(f"/proc/{pid}").exists() and _parent(pid) != os.getpid()
        assert reads_as(info["uri"], disk, "qcow2")
        children = server_children(pid)
        stopped = cdisk("serve", "--json", "--stop", path)
        assert stopped.code == 0 and json.loads(stopped.out)["stopped"] == pid, stopped.err
        assert not running(pid), "--stop returns once the server has ended"
        assert not any(running(child) for child in children)
        assert list(tmp_path.iterdir()) == [], "socket, its directory and the pid file removed"
        again = cdisk("serve", "--stop", path)
        assert_one_line_error(again, 2, "nothing serves")
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_detach_reports_a_refusal_and_leaves_nothing(images: Images, tmp_path: Path) -> None:
    disk = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", disk, "8M")
    name = images.build({"disk.qcow2": disk})
    refused = cdisk("serve", "-q", "--detach", "--pid-file", tmp_path / "p.pid", "--socket", tmp_path / "s", name)
    assert_one_line_error(refused, 5, "backing file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backed.qcow2"]


@pytest.mark.needs("qemu-nbd")
def test_stop_refuses_a_server_that_is_not_cdisk(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.qcow2")
    path = tmp_path / "other.sock"
    other = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "-f", "qcow2", f"--socket={path}", disk],
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(1000):
            if path.exists():
                break
            time.sleep(0.01)
        refused = cdisk("serve", "--stop", path)
        assert refused.code == 2 and "not by cdisk serve" in refused.err
        assert other.poll() is None, "left running"
    finally:
        other.terminate()
        other.wait()


def test_a_pid_file_of_a_running_process_is_refused(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    pid_file = tmp_path / "p.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    refused = cdisk("serve", "-q", "--pid-file", pid_file, name)
    assert refused.code == 2 and "still runs" in refused.err
    assert pid_file.read_text() == f"{os.getpid()}\n"


def test_listen_on_tcp(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    port = free_port()
    with served("--listen", f"127.0.0.1:{port}", name) as (_, info):
        assert info["uri"] == f"nbd://127.0.0.1:{port}/disk/disk.qcow2" and info["socket"] is None
        assert info["listen"] == f"127.0.0.1:{port}"
        assert reads_as(info["uri"], disk, "qcow2")
    for wrong in ("10809", ":10809", "127.0.0.1:0", "127.0.0.1:99999", "[::1"):
        refused = cdisk("serve", "-q", "--listen", wrong, name)
        assert refused.code == 2 and "--listen" in refused.err, wrong


def test_the_image_removed_meanwhile_is_still_served(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served(name) as (_, info):
        sh("podman", "rmi", "-f", name)
        assert reads_as(info["uri"], disk, "qcow2")


@pytest.mark.parametrize(("disk", "fmt", "server"), [
    ("disk.vmdk", "vmdk", "qemu-storage-daemon"),  # qemu-storage-daemon's (a qcow2: cdisk's)
    ("disk.raw", "raw", "cdisk's raw NBD server"),
])
def test_the_server_dying_ends_serve_with_one_line(images: Images, disk: str, fmt: str, server: str) -> None:
    name = images.build({disk: images.disk(disk, fmt, "4M")})
    with served(name) as (proc, info):
        [bwrap] = server_children(proc.pid)
        os.kill(bwrap, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert_one_line_error(Run(proc.returncode, "", err), 7, f"{server} stopped")
        assert not os.path.exists(os.path.dirname(str(info["socket"])))


def test_many_failed_clients_do_not_stall_the_server(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served(name) as (_, info):
        # Each client that leaves mid-handshake makes the server log a line: more than a pipe holds.
        for _ in range(1500):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(10)  # a server stalled on its full stderr pipe stops accepting
                client.connect(str(info["socket"]))
        assert reads_as(info["uri"], disk, "qcow2")


def test_systemd_is_told_when_it_serves(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(60)
        proc = subprocess.Popen([sys.executable, "-m", "cdisk", "serve", "-q", name],
                                env={**os.environ, "NOTIFY_SOCKET": str(notify)}, stdout=subprocess.PIPE, text=True)
        try:
            message = listener.recv(4096).decode()
            assert message.splitlines() == ["READY=1", f"MAINPID={proc.pid}"]
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.needs("qemu-io")
def test_all_lets_each_disk_have_its_clients(images: Images) -> None:
    first = images.disk("a.qcow2")
    second = images.disk("b.raw", "raw", "4M", 0xCD)
    name = images.build({"a.qcow2": first, "b.raw": second})
    with served("--all", name) as (_, info):
        exports = {e["name"]: e["uri"] for e in info["exports"]}  # type: ignore[attr-defined]
        holding = subprocess.Popen(["qemu-io", "-r", "-f", "raw", "-c", "sleep 30000", exports["disk/a.qcow2"]],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            # --shared 1 is one client per disk: a VM with both disks must not wait for itself.
            compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", exports["disk/b.raw"], second],
                                      capture_output=True, timeout=30)
            assert compared.returncode == 0
        finally:
            holding.kill()
            holding.wait()


def test_the_socket_is_made_by_cdisk_and_removed_only_if_still_its(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    path = tmp_path / "vm.sock"
    with served("--socket", path, name) as _:
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
        assert list(tmp_path.iterdir()) == [path], "no directory beside it: the server writes nothing"
        path.rename(tmp_path / "moved.sock")
        path.write_text("someone else's\n")
    assert path.read_text() == "someone else's\n"
    with served("--socket", tmp_path / "group.sock", "--socket-mode", "660", name):
        assert (tmp_path / "group.sock").stat().st_mode & 0o777 == 0o660


def test_a_taken_port_or_socket_is_refused_before_the_image_is_opened(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = cdisk("serve", "-q", "--listen", f"127.0.0.1:{port}", "localhost/cdisk-test-absent:latest")
        assert refused.code == 2 and "Address already in use" in refused.err, refused.err
    (tmp_path / "x.sock").write_text("")
    refused = cdisk("serve", "-q", "--socket", tmp_path / "x.sock", "localhost/cdisk-test-absent:latest")
    assert refused.code == 2 and "exists" in refused.err


def test_listen_by_name(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    port = free_port()
    with served("--listen", f"localhost:{port}", name) as (_, info):
        assert reads_as(info["uri"], disk, "qcow2")


def test_a_refused_pid_file_leaves_no_overlay(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    (tmp_path / "p.pid").write_text(f"{os.getpid()}\n")
    refused = cdisk("serve", "-q", "--pid-file", tmp_path / "p.pid", "--overlay", tmp_path / "vm.qcow2", name)
    assert refused.code == 2 and "still runs" in refused.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pid"]


def test_sighup_stops_it_cleanly(images: Images) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    with served(name) as (proc, info):
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert not os.path.exists(os.path.dirname(str(info["socket"])))


def _flood(uri_socket: str, export: str) -> socket.socket:
    """A client that asks for 16 reads of 32 MiB and never reads a reply: the most one client can make the
    server hold."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(uri_socket)
    client.recv(18)
    client.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 1, len(export)) + export.encode())
    client.recv(10)
    for handle in range(16):
        client.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, handle, 0, 32 << 20))
    return client


def test_clients_that_do_not_read_cannot_bring_it_down(images: Images) -> None:
    disk = images.disk("big.raw", "raw", "64M")
    name = images.build({"disk.raw": disk})
    with served("--shared", "4", name) as (proc, info):
        flooding = [_flood(str(info["socket"]), "disk/disk.raw") for _ in range(3)]
        try:
            time.sleep(2)
            assert proc.poll() is None
            assert reads_as(info["uri"], disk, "raw")
        finally:
            for client in flooding:
                client.close()


@pytest.mark.parametrize("switches", [["--shared", "99999999999999"], ["--shared", "0"], ["--shared", "x"],
                                      ["--socket-mode", "7777"], ["--socket-mode", "rw"]])
def test_serve_numbers_out_of_range_are_one_line(switches: list[str]) -> None:
    result = cdisk("serve", *switches, "localhost/cdisk-nothing:1")
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1, result.err
    assert switches[0] in result.err

