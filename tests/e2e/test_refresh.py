"""`cdisk refresh` against a real registry: no-op, updates, repairs, --keep, locks, signals, full disks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.devices import loop_device
from tests.helpers import Images, Remote, Run, assert_one_line_error, cdisk, private_services, same_disk, wait_for
from tests.images import sh
from tests.registries import Registry
from tests.tool_fakes import faulty_convert

TLS = ("--tls-verify", "false")


def refresh(remote: Remote, target: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    return cdisk("refresh", "--json", *TLS, *extra, remote.ref, target, env=env)


def action(result: Run) -> str:
    assert result.code == 0, result.err
    return str(json.loads(result.out.splitlines()[-1])["action"])


def _identity(path: Path) -> tuple[int, int, int]:
    """Which file is at `path`, and when it was last written."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def test_first_noop_update_and_repair(remote: Remote, tmp_path: Path) -> None:
    first = remote.push(0x11)
    target = tmp_path / "vm.raw"
    result = refresh(remote, target)
    assert action(result) == "updated"
    data = json.loads(result.out.splitlines()[-1])
    assert {"action", "image", "digest", "target", "seconds"} <= set(data) and data["target"] == str(target)
    assert same_disk(first, "qcow2", target, "raw")
    written = _identity(target)
    assert action(refresh(remote, target)) == "unchanged"
    assert action(refresh(remote, target, "--pull", "never")) == "unchanged"

    second = remote.push(0x22)
    assert action(refresh(remote, target, "--pull", "never")) == "unchanged"  # offline: the cache rules
    assert _identity(target) == written  # unchanged means untouched
    assert action(refresh(remote, target)) == "updated"
    assert _identity(target) != written
    assert same_disk(second, "qcow2", target, "raw")

    with open(target, "r+b") as f:  # damage it: size and mtime no longer what was written
        f.seek(0, os.SEEK_END)
        f.write(b"junk")
    assert action(refresh(remote, target)) == "updated"
    assert same_disk(second, "qcow2", target, "raw")
    record = json.loads((tmp_path / "vm.raw.cdisk.json").read_text())
    assert record["size"] == target.stat().st_size and record["mtime_ns"] == target.stat().st_mtime_ns


def test_keep_previous_versions(remote: Remote, tmp_path: Path) -> None:
    target = tmp_path / "vm.raw"
    disks = []
    for pattern in (0x31, 0x32, 0x33, 0x34):
        disks.append(remote.push(pattern))
        assert action(refresh(remote, target, "--keep", "2")) == "updated"
    assert same_disk(disks[3], "qcow2", target, "raw")
    assert same_disk(disks[2], "qcow2", tmp_path / "vm.raw.1", "raw")
    assert same_disk(disks[1], "qcow2", tmp_path / "vm.raw.2", "raw")
    assert not (tmp_path / "vm.raw.3").exists()


def test_a_file_refresh_did_not_write_needs_force(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0x41)
    target = tmp_path / "vm.raw"
    target.write_bytes(b"someone's disk")
    result = refresh(remote, target)
    assert result.code == 6 and "--force" in result.err and target.read_bytes() == b"someone's disk"
    assert action(refresh(remote, target, "--force")) == "updated"
    assert same_disk(disk, "qcow2", target, "raw")


def _blocked_on_flock(pid: int, lock: Path) -> bool:
    """Whether process `pid` waits, in the kernel, for a flock of the file `lock` (a `->` line of /proc/locks)."""
    inode = os.stat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1:3] == ["->", "FLOCK"] and int(fields[5]) == pid and int(fields[6].rsplit(":", 1)[1]) == inode:
            return True
    return False


def test_no_wait_and_waiting_on_the_lock(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0x51)
    target = tmp_path / "vm.raw"
    lock = tmp_path / ".vm.raw.cdisk.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # this test is the refresh of TARGET that runs
        busy = refresh(remote, target, "--no-wait")
        assert_one_line_error(busy, 9, "another refresh")
        assert [p.name for p in tmp_path.iterdir()] == [lock.name]
        proc = subprocess.Popen([sys.executable, "-m", "cdisk", "refresh", "--json", *TLS, remote.ref, str(target)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The kernel's word that it waits for the lock: a refresh that does not wait is never seen so.
            wait_for(lambda: _blocked_on_flock(proc.pid, lock) or proc.poll() is not None, 60)
            assert proc.poll() is None, proc.communicate()
            assert [p.name for p in tmp_path.iterdir()] == [lock.name]
            fcntl.flock(fd, fcntl.LOCK_UN)  # the holder is done: the waiting one goes on
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(fd)
    assert action(Run(proc.returncode, out, err)) == "updated"
    assert same_disk(disk, "qcow2", target, "raw")


def test_concurrent_refreshes_convert_once(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0x61)
    target = tmp_path / "vm.raw"
    argv = [sys.executable, "-m", "cdisk", "refresh", "--json", *TLS, remote.ref, str(target)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    actions = sorted(action(Run(p.wait(120), p.stdout.read(), p.stderr.read())) for p in procs)  # type: ignore[union-attr]
    assert actions == ["unchanged", "unchanged", "updated"]
    assert same_disk(disk, "qcow2", target, "raw")


def _slow_qemu_img(bin_dir: Path) -> dict[str, str]:
    """The real qemu-img, its convert rate-limited so that a signal lands in the middle of it."""
    return faulty_convert(bin_dir, "os.execv(real, [real, 'convert', '-r', '1M', *args[1:]])")


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


def test_sigterm_during_conversion_keeps_the_previous_target(remote: Remote, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "vm.raw"
    remote.push(0x71)
    assert action(refresh(remote, target)) == "updated"
    before = _snapshot(out)
    remote.push(0x72, size="16M", fill=True)  # 16 MiB of data at 1 MiB/s: the conversion runs for seconds
    env = {**os.environ, **_slow_qemu_img(tmp_path / "bin")}
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "refresh", "-q", *TLS, remote.ref, str(target)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(p.name.endswith(".cdisk-part") for p in out.iterdir()) or proc.poll() is not None, 60)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _snapshot(out) == before


def test_full_filesystem_keeps_the_previous_target(remote: Remote, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if sh("mount", "-t", "tmpfs", "-o", "size=12M", "tmpfs", small, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = small / "vm.raw"
        remote.push(0x81, size="8M", fmt="raw", fill=True)
        assert action(refresh(remote, target, "--tmpdir", tmp_path)) == "updated"
        before = _snapshot(small)
        remote.push(0x82, size="8M", fmt="raw", fill=True)  # a second 8 MiB does not fit beside the first
        result = refresh(remote, target, "--tmpdir", tmp_path)
        assert result.code == 6 and "free" in result.err
        assert _snapshot(small) == before
    finally:
        sh("umount", small)


@pytest.mark.needs("podman")
def test_podman_service_dying_mid_run(tmp_path: Path) -> None:
    # A registry that accepts and then says nothing holds the pull open; the service dies meanwhile.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            held.append(listener.accept()[0])
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    target = tmp_path / "vm.raw"
    # --pull always: podman's pull is the first to reach the registry (no HEAD of cdisk's own before it).
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "refresh", "-q", *TLS, "--pull", "always",
                             f"127.0.0.1:{port}/cdisk/stall:1", str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert connected.wait(60), "podman never reached the registry"
        # The service this refresh started, and no other: what other runs on the machine started is not ours.
        [service] = private_services(proc.pid)
        os.kill(service, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert_one_line_error(Run(proc.returncode, "", err), 7, "the podman API stopped answering")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vm.raw.cdisk.lock"]


@pytest.mark.parametrize("how", ["device", "by-id link", "qcow2"])
def test_a_block_device_is_refused_before_anything(tmp_path: Path, how: str) -> None:
    with loop_device(tmp_path / "loop.img") as device:
        target = device
        extra: list[str] = []
        if how == "by-id link":
            target = tmp_path / "virtio-vm"
            target.symlink_to(device)
        if how == "qcow2":
            extra = ["-O", "qcow2"]
        before = set(os.listdir("/dev"))
        # An image that is nowhere: a lookup before the refusal would fail with exit 3 instead.
        result = cdisk("refresh", "--force", "--pull", "never", *extra, "localhost/cdisk-test-absent:1", target)
        assert_one_line_error(result, 6, "block device")
        assert "cdisk convert --force" in result.err and "cdisk verify" in result.err
        assert set(os.listdir("/dev")) - before == set()  # neither lock nor record in /dev
        assert (tmp_path / "loop.img").read_bytes() == b"\x5a" * (8 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["loop.img", *(["virtio-vm"] * (how == "by-id link"))])


def test_the_longest_name_refresh_can_keep_a_record_for(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0x91)
    longest = tmp_path / ("v" * 239 + ".raw")  # 243 bytes: `.NAME.cdisk.lock` is 255
    assert action(refresh(remote, longest, "--keep", "1")) == "updated"
    assert action(refresh(remote, longest, "--keep", "1")) == "unchanged"
    assert same_disk(disk, "qcow2", longest, "raw")
    assert (tmp_path / f"{longest.name}.cdisk.json").exists()


@pytest.mark.parametrize("length", [244, 254, 255])
def test_a_name_too_long_for_the_record_is_refused(tmp_path: Path, length: int) -> None:
    target = tmp_path / ("v" * (length - 4) + ".raw")
    result = cdisk("refresh", "--pull", "never", "localhost/cdisk-test-absent:1", target)
    assert_one_line_error(result, 6, "too long")
    assert "at most 243 bytes" in result.err
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_directory_is_refused_before_the_lock(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if sh("mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", ro, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = cdisk("refresh", "--pull", "never", "localhost/cdisk-test-absent:1", ro / "vm.raw")
        assert_one_line_error(result, 6, "Read-only file system")
    finally:
        sh("umount", ro)


def test_a_dangling_link_is_not_refreshed_through(tmp_path: Path) -> None:
    target = tmp_path / "vm.raw"
    target.symlink_to("gone/vm.raw")
    result = cdisk("refresh", "--force", "--pull", "never", "localhost/cdisk-test-absent:1", target)
    assert result.code == 6 and "dangling" in result.err
    assert [p.name for p in tmp_path.iterdir()] == ["vm.raw"] and target.is_symlink()


def test_refresh_through_a_link_keeps_the_link(remote: Remote, tmp_path: Path) -> None:
    disk = remote.push(0xA1)
    (tmp_path / "v").mkdir()
    link = tmp_path / "current.raw"
    link.symlink_to("v/vm.raw")
    (tmp_path / "v" / "vm.raw").write_bytes(b"old")
    assert action(refresh(remote, link, "--force")) == "updated"
    assert link.is_symlink() and same_disk(disk, "qcow2", tmp_path / "v" / "vm.raw", "raw")
    assert (tmp_path / "v" / "vm.raw.cdisk.json").exists()  # the record describes the file, beside it
    assert action(refresh(remote, link)) == "unchanged"


def test_an_unreadable_record_is_none_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "vm.raw.cdisk.json").symlink_to("/dev/zero")  # read whole, it took memory to the limit
    (tmp_path / "vm.raw").write_bytes(b"\0" * 512)
    result = cdisk("refresh", "-q", "--pull", "never", "localhost/cdisk-nothing:1", tmp_path / "vm.raw")
    assert_one_line_error(result, 6, "its record vm.raw.cdisk.json is unreadable (it is a symlink); pass --force")
    assert (tmp_path / "vm.raw").read_bytes() == b"\0" * 512



def _manifest_requests(registry: Registry, since: int) -> list[tuple[str, int]]:
    return [(r.method, r.status) for r in registry.requests(since) if "/manifests/" in r.uri]


def _metrics(path: Path) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    got = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            got[sample.name + (f"/{sample.labels['outcome']}" if "outcome" in sample.labels else "")] = sample.value
    return got


@pytest.fixture(params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine whose store the test's images are built in and refresh reads (`images` follows it)."""
    if request.param == "docker":
        request.getfixturevalue("docker_host")
    return str(request.param)


def test_an_unchanged_refresh_asks_the_registry_one_head_and_pulls_nothing(
        engine: str, logged_remote: Remote, logged_registry: Registry, tmp_path: Path) -> None:
    """The fleet's case (issue 25): the registry's own log shows one HEAD of the tag and no manifest GET while the
    tag stays; a moved tag is pulled; a registry that does not answer leaves TARGET as it was (exit 10), and the
    metrics file says each outcome."""
    target, metrics = tmp_path / "vm.raw", tmp_path / "cdisk-refresh-vm.prom"
    first = logged_remote.push(0x31)
    result = refresh(logged_remote, target, "--engine", engine, "--metrics-file", metrics)
    assert action(result) == "updated" and same_disk(first, "qcow2", target, "raw")
    tag_digest = json.loads((tmp_path / "vm.raw.cdisk.json").read_text())["tag_digest"]
    assert tag_digest.startswith("sha256:") and json.loads(result.out.splitlines()[-1])["tag_digest"] == tag_digest
    assert _metrics(metrics)["cdisk_refresh_outcome/updated"] == 1

    mark = logged_registry.mark()
    for _ in range(2):
        assert action(refresh(logged_remote, target, "--engine", engine, "--metrics-file", metrics)) == "unchanged"
    assert _manifest_requests(logged_registry, mark) == [("HEAD", 200)] * 2  # no GET: no pull counted
    seen = _metrics(metrics)
    assert seen["cdisk_refresh_outcome/unchanged"] == 1 and seen["cdisk_refresh_written_bytes"] == 0

    second = logged_remote.push(0x32)
    mark = logged_registry.mark()
    assert action(refresh(logged_remote, target, "--engine", engine, "--metrics-file", metrics)) == "updated"
    assert same_disk(second, "qcow2", target, "raw")
    asked = _manifest_requests(logged_registry, mark)
    assert asked[0] == ("HEAD", 200) and ("GET", 200) in asked  # moved: asked, then pulled
    last_success = _metrics(metrics)["cdisk_refresh_last_success_timestamp_seconds"]

    written = _identity(target)
    logged_registry.stop()
    result = refresh(logged_remote, target, "--engine", engine, "--metrics-file", metrics)
    assert result.code == 10, result.err
    assert "cdisk: warning: the registry did not answer for" in result.err and "is not checked" in result.err
    data = json.loads(result.out.splitlines()[-1])
    assert (data["action"], data["checked"]) == ("unchanged", False)
    assert _identity(target) == written
    seen = _metrics(metrics)
    assert seen["cdisk_refresh_outcome/not_checked"] == 1 and seen["cdisk_refresh_exit_code"] == 10
    assert seen["cdisk_refresh_last_success_timestamp_seconds"] == last_success


def test_a_record_of_an_earlier_version_pulls_once_then_asks_by_head(logged_remote: Remote,
                                                                        logged_registry: Registry,
                                                                        tmp_path: Path) -> None:
    logged_remote.push(0x33)
    target = tmp_path / "vm.raw"
    assert action(refresh(logged_remote, target)) == "updated"
    record_path = tmp_path / "vm.raw.cdisk.json"
    old = json.loads(record_path.read_text())
    del old["tag_digest"]  # as cdisk wrote it before issue 25
    record_path.write_text(json.dumps(old))
    assert action(refresh(logged_remote, target)) == "unchanged"
    assert json.loads(record_path.read_text())["tag_digest"].startswith("sha256:")
    mark = logged_registry.mark()
    assert action(refresh(logged_remote, target)) == "unchanged"
    assert _manifest_requests(logged_registry, mark) == [("HEAD", 200)]


def test_a_local_image_retagged_meanwhile_is_not_taken_for_the_registrys(remote: Remote, images: Images,
                                                                          tmp_path: Path) -> None:
    """The tag stays where the record says, but another job tagged another image with its name in the local
    store: refresh takes the registry's image (it pulls it), not the stranger, and the record keeps its digest."""
    first = remote.push(0x34)
    target = tmp_path / "vm.raw"
    assert action(refresh(remote, target)) == "updated"
    stranger = images.build({"disk.qcow2": images.disk("other.qcow2", pattern=0x35)})
    sh("podman", "tag", stranger, remote.ref)
    result = refresh(remote, target)
    assert action(result) == "unchanged", result.err
    assert same_disk(first, "qcow2", target, "raw")
    record = json.loads((tmp_path / "vm.raw.cdisk.json").read_text())
    assert record["tag_digest"] == json.loads(result.out.splitlines()[-1])["tag_digest"] != ""
