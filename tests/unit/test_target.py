"""The target's rules: a temp name beside it that stays a legal name, the one temp-dir rule, and what is no target."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from cdisk.core import leftovers
from cdisk.core.errors import TargetError
from cdisk.core.target import Target, plan_target, temp_parent, temp_prefix, writing


@pytest.mark.parametrize(("name", "kept"), [("vm.raw", "vm.raw"), ("x" * 234, "x" * 234), ("x" * 236, "x" * 234),
                                           ("é" * 127, "é" * 117)])
def test_temp_prefix_keeps_the_temp_name_legal(tmp_path: Path, name: str, kept: str) -> None:
    # 255 - len("..") - mkstemp's 8 - len(".cdisk-part") = 234 bytes of NAME at most; é is 2 bytes.
    prefix = temp_prefix(str(tmp_path), name)
    assert prefix == f".{kept}."
    assert len(os.fsencode(prefix)) + 8 + len(".cdisk-part") <= 255


def test_one_temp_dir_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert temp_parent("/given", Target("/vms/a.raw", is_block=False)) == "/given"
    assert temp_parent(None, Target("/vms/a.raw", is_block=False)) == "/vms"
    # build's --output (an oci: layout is a directory, an archive a file): the directory that will hold it
    assert temp_parent(None, Target("/out/layout", is_block=False)) == "/out"
    assert temp_parent(None, Target("/dev/sdz", is_block=True)) == str(tmp_path)
    assert temp_parent(None, None) == str(tmp_path)
    monkeypatch.setenv("TMPDIR", "")
    assert temp_parent(None, None) == "/var/tmp"
    monkeypatch.delenv("TMPDIR")
    assert temp_parent(None, Target("/dev/loop7", is_block=True)) == "/var/tmp"


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_character_device_fifo_or_socket_is_no_target(tmp_path: Path, force: bool) -> None:
    """/dev/null (or a link to it), a FIFO, a socket: refused at once, --force or not, and --force never offered."""
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        (tmp_path / "null-link").symlink_to("/dev/null")
        for path, kind in [("/dev/null", "a character device"), (tmp_path / "null-link", "a character device"),
                           (tmp_path / "fifo", "a FIFO"), (tmp_path / "sock", "a socket")]:
            with pytest.raises(TargetError) as refused:
                plan_target(str(path), force, "raw")
            assert refused.value.message == (f"{path} is {kind}, not a disk target; write a file or a block device "
                                             "(to try a conversion, write a file and check it with `cdisk verify`)")


def test_an_existing_file_names_force_and_the_output_format(tmp_path: Path) -> None:
    (tmp_path / "vm.qcow2").write_bytes(b"previous")
    with pytest.raises(TargetError) as refused:
        plan_target(str(tmp_path / "vm.qcow2"), False, "qcow2")
    assert refused.value.message == (f"{tmp_path}/vm.qcow2 already exists; pass --force to replace it (cdisk's -f "
                                     "is --force; the output format is -O)")
    assert plan_target(str(tmp_path / "vm.qcow2"), True, "qcow2") == Target(str(tmp_path / "vm.qcow2"), False)


@pytest.mark.parametrize("name", ["quay.io/containerdisks/fedora:40", "localhost/vm:1", "127.0.0.1:5000/vm@sha256:"
                                  + "a" * 64, "registry.example.com:443/a/b/c:v1.2"])
def test_an_image_name_as_target_says_the_arguments_are_swapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 name: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetError) as refused:
        plan_target(name, False, "raw")
    directory = os.path.dirname(str(tmp_path / name))
    assert refused.value.message == (f"TARGET {name} reads as an image name, and {directory} does not exist; IMAGE "
                                     "comes first, then TARGET")


@pytest.mark.parametrize("path", ["vms/fedora.raw", "out.d/vm.raw", "fedora/40:x", "quay.io/containerdisks/fedora"])
def test_a_missing_directory_of_a_path_is_only_that(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    path: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetError) as refused:
        plan_target(path, False, "raw")
    assert refused.value.message == (f"{os.path.dirname(str(tmp_path / path))} does not exist; create it or choose "
                                     "another target")


def test_writing_removes_what_a_killed_run_left_beside_the_target(tmp_path: Path) -> None:
    """A partial disk and a probe a run killed with SIGKILL left (no lock holds them: as a dead run leaves them,
    or as cdisk before the locks left them) go when the next run writes there; the operator's files stay."""
    for prefix, suffix in ((temp_prefix(str(tmp_path), "vm.raw"), ".cdisk-part"), (".cdisk-probe-", "")):
        fd, _ = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=tmp_path)
        os.close(fd)
    (tmp_path / "other.raw").write_bytes(b"keep")
    with writing(Target(str(tmp_path / "vm.raw"), is_block=False)) as temp:
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(temp), "other.raw"])
        Path(temp).write_bytes(b"disk")
    assert sorted(os.listdir(tmp_path)) == ["other.raw", "vm.raw"]


def test_writing_holds_its_partial_file_against_another_runs_sweep(tmp_path: Path) -> None:
    with writing(Target(str(tmp_path / "vm.raw"), is_block=False)) as temp:
        assert leftovers.sweep(str(tmp_path), leftovers.BESIDE_TARGET) == []
        assert os.path.exists(temp)
        Path(temp).write_bytes(b"disk")
    assert os.listdir(tmp_path) == ["vm.raw"]
