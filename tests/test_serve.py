"""`cdisk serve`: the image's disk as a read-only NBD export, checked with the real qemu-img reading the URI;
stopped by SIGINT or SIGTERM with a client connected, leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Images, cdisk
from tests.images import sh

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "qemu-nbd", "bwrap")


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


def qemu_nbd_children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_the_export_reads_as_the_disk(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    with served(name) as (_, info):
        assert str(info["uri"]).startswith("nbd+unix:///disk/disk.qcow2?socket=")
        assert (info["export"], info["disk"], info["source_format"]) == ("disk/disk.qcow2", "/disk/disk.qcow2",
                                                                         "qcow2")
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
        children = qemu_nbd_children(proc.pid)
        assert children, "qemu-nbd runs as cdisk's child"
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
        assert taken.code == 2 and "exists" in taken.err and taken.err.count("\n") == 1
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
