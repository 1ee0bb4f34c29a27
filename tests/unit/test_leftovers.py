"""What a run killed with SIGKILL left is removed by the next; a live run's temp names, and anything not cdisk's,
never are. The dead run is a real child process killed with SIGKILL while it holds its names."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from cdisk.core import leftovers

# A run in miniature: the names a convert makes, held as cdisk holds them, until SIGKILL.
_HOLDER = """
import sys, time
from cdisk.core import leftovers
where = sys.argv[1]
leftovers.locked_file(where, ".vm.raw.", ".cdisk-part")
leftovers.locked_file(where, ".cdisk-probe-")
_, save = leftovers.locked_dir(where, ".cdisk-save-")
open(save + "/blob", "wb").write(b"x" * 4096)
leftovers.locked_dir(where, "cdisk-podman-")
leftovers.locked_dir(where, ".vm.oci.", ".cdisk-dir")
print("held", flush=True)
time.sleep(600)
"""

_ALL = (leftovers.PART, leftovers.PART_DIR, leftovers.PROBE, leftovers.SAVE, leftovers.SERVICE)


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    """A directory for the test's cdisk-like names, emptied before the leak check looks for them."""
    made = tmp_path / "run"
    made.mkdir()
    yield made
    for entry in made.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _killed_run(where: Path) -> list[str]:
    """The names a run holding them left in `where` when SIGKILL ended it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(where)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return sorted(os.listdir(where))


def test_a_dead_runs_names_are_removed(where: Path) -> None:
    left = _killed_run(where)
    assert len(left) == 5
    assert sorted(leftovers.sweep(str(where), _ALL)) == left
    assert os.listdir(where) == []


def test_only_the_patterns_asked_for_are_swept(where: Path) -> None:
    _killed_run(where)
    leftovers.sweep(str(where), leftovers.BESIDE_TARGET)
    assert sorted(n.split("-")[1] if n.startswith(("cdisk-", ".cdisk-")) else n for n in os.listdir(where)) \
        == ["podman", "save"]


def test_a_live_runs_names_are_kept(where: Path) -> None:
    fd, part = leftovers.locked_file(str(where), ".vm.raw.", ".cdisk-part")
    with leftovers.held_dir(str(where), ".cdisk-save-") as save:
        assert leftovers.sweep(str(where), _ALL) == []
        assert os.path.isfile(part) and os.path.isdir(save)
    assert not os.path.exists(save), "held_dir removes its directory"
    os.close(fd)
    assert leftovers.sweep(str(where), _ALL) == [os.path.basename(part)]


@pytest.mark.parametrize("name", [
    ".vm.raw.abcdefgh.cdisk-part.keep",  # not the whole name
    "vm.raw.abcdefgh.cdisk-part",  # no leading dot
    ".vm.raw.abcdefg.cdisk-part",  # seven random characters
    ".cdisk-save-ABCDEFGH",  # mkdtemp's characters are lower-case
    ".cdisk-probe-abcdefgh-",
    "cdisk-serve-abcdefgh",
    "vm.raw",
])
def test_names_not_cdisks_are_never_touched(where: Path, name: str) -> None:
    (where / name).write_bytes(b"operator's")
    assert leftovers.sweep(str(where), _ALL) == []
    assert (where / name).read_bytes() == b"operator's"


def test_symlinks_and_the_wrong_kind_are_never_touched(where: Path) -> None:
    precious = where / "precious"
    precious.mkdir()
    (precious / "disk").write_bytes(b"keep")
    (where / ".cdisk-save-abcdefgh").symlink_to(precious)  # a link named like a save dir
    (where / ".vm.raw.abcdefgh.cdisk-part").symlink_to(precious / "disk")
    (where / ".vm.raw.ijklmnop.cdisk-part").mkdir()  # a directory named like a partial file
    (where / "cdisk-podman-abcdefgh").write_bytes(b"")  # a file named like a service dir
    assert leftovers.sweep(str(where), _ALL) == []
    assert (precious / "disk").read_bytes() == b"keep"
    assert len(os.listdir(where)) == 5


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_another_users_names_are_never_touched(where: Path) -> None:
    theirs = where / ".vm.raw.abcdefgh.cdisk-part"
    theirs.write_bytes(b"")
    os.chown(theirs, 65534, 65534)
    assert leftovers.sweep(str(where), _ALL) == []
    assert theirs.exists()


def test_a_sweep_looks_at_a_bounded_number_of_entries(where: Path) -> None:
    for n in range(50):
        (where / f".vm{n}.abcdefgh.cdisk-part").write_bytes(b"")
    assert len(leftovers.sweep(str(where), _ALL, limit=10)) == 10
    assert len(os.listdir(where)) == 40


def test_a_missing_directory_is_no_error(where: Path) -> None:
    assert leftovers.sweep(str(where / "gone"), _ALL) == []


def test_held_descriptors_are_not_inherited(where: Path) -> None:
    fd, _ = leftovers.locked_file(str(where), ".cdisk-probe-")
    try:
        assert not os.get_inheritable(fd)  # a child (qemu-img, podman) never keeps a dead run's lock alive
    finally:
        os.close(fd)


def test_a_held_file_leaves_qemus_lock_bytes_free(where: Path) -> None:
    """qemu-img writes the partial disk under its own locks (bytes 100 to 300, file-posix.c): the hold never
    covers them, on a local filesystem or on NFS, where a whole-file lock would."""
    fd, part = leftovers.locked_file(str(where), ".vm.raw.", ".cdisk-part")
    qemu = os.open(part, os.O_RDWR)
    try:
        qemus = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 100, 201, 0)
        fcntl.fcntl(qemu, fcntl.F_OFD_SETLK, qemus)  # raises (EAGAIN) if the hold covered them
    finally:
        os.close(qemu)
        os.close(fd)


def test_a_file_system_other_machines_share_is_never_swept(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NFS mounted nolock, FUSE, CIFS: a lock this machine grants says nothing of a run on another one. Such a
    # mount cannot be made here: the answer of statfs is what is injected.
    left = _killed_run(where)
    monkeypatch.setattr(leftovers, "locks_are_shared", lambda directory: False)
    assert leftovers.sweep(str(where), _ALL) == []
    assert sorted(os.listdir(where)) == left


def test_local_file_systems_are_told_from_others() -> None:
    assert leftovers.locks_are_shared("/dev/shm")  # tmpfs
    assert not leftovers.locks_are_shared("/proc")  # not a file system runs write in
    assert not leftovers.locks_are_shared("/no/such/directory")


_SERVE_HOLDER = """
import os, socket, sys, time
from cdisk.core import leftovers
_, directory = leftovers.locked_dir(sys.argv[1], "cdisk-serve-")
socket.socket(socket.AF_UNIX).bind(os.path.join(directory, "nbd.sock"))
print("held", flush=True)
time.sleep(600)
"""


def test_a_dead_serves_socket_dir_is_removed_and_a_live_ones_kept(where: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _SERVE_HOLDER, str(where)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        before = set(os.listdir(where))
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        [dead] = leftovers.sweep(str(where), (leftovers.SERVE,))
        assert set(os.listdir(where)) == before - {dead}
        assert leftovers.SERVE.name.fullmatch(dead)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_directory_swapped_for_a_link_mid_sweep_does_not_redirect_the_removal(
        where: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a name's judging and its removal, the swept directory is renamed and a link to another directory
    holding the same names put in its place: the removal stays in the directory that was listed."""
    left = _killed_run(where)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in left:
        (victim / name).mkdir() if (where / name).is_dir() else (victim / name).write_bytes(b"not cdisk's")
    moved = tmp_path / "moved"
    lock = leftovers._lock

    def swapped(fd: int, is_dir: bool, wait: bool) -> bool | None:
        taken = lock(fd, is_dir, wait)
        if not moved.exists():
            where.rename(moved)
            where.symlink_to(victim)
        return taken

    monkeypatch.setattr(leftovers, "_lock", swapped)
    try:
        leftovers.sweep(str(where), _ALL)
        assert sorted(os.listdir(victim)) == left, "the sweep removed names in the directory a link pointed to"
        assert os.listdir(moved) == []
    finally:
        shutil.rmtree(victim)
        if moved.exists():
            where.unlink()
            moved.rename(where)


def test_a_users_directory_renamed_to_a_name_of_cdisks_is_kept(where: Path) -> None:
    """In a directory others may write in, another user renames the operator's directory to a name of cdisk's: a
    sweep removes no directory that cdisk did not mark when it made it."""
    for name in (".mydata.abcdefgh.cdisk-dir", ".cdisk-save-abcdefgh", "cdisk-podman-abcdefgh"):
        (where / name).mkdir()
        (where / name / "precious").write_bytes(b"the operator's")
    (where / ".cdisk-save-ijklmnop").mkdir()  # a run killed before it marked its directory: empty
    assert leftovers.sweep(str(where), _ALL) == [".cdisk-save-ijklmnop"]
    assert len(list(where.glob("*/precious"))) == 3


def _dead_save_dir(where: Path) -> Path:
    """A save directory of a run killed with SIGKILL (three blobs in it), its lock free."""
    [save] = [where / name for name in _killed_run(where) if name.startswith(".cdisk-save-")]
    for name in ("blob2", "blob3"):
        (save / name).write_bytes(b"y")
    return save


def _writer_at_unlink(monkeypatch: pytest.MonkeyPatch, save: Path, times: int | None) -> None:
    """The dead run's child still writing while its directory goes: each removal of a name in it lets one more name
    in (`times` of them; None: for ever). A race too narrow to be caught for real on demand."""
    unlink, made = os.unlink, [0]

    def racing(path: str, *args: object, **kwargs: object) -> None:
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]
        if times is None or made[0] < times:
            made[0] += 1
            with suppress(OSError):
                (save / f"late{made[0]}").write_bytes(b"z")

    monkeypatch.setattr(os, "unlink", racing)


def test_a_dead_runs_directory_still_written_by_its_child_goes_all_the_same(
        where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `podman save` told to stop when cdisk died may add a name while the next run removes the directory: the
    sweep empties it again until nothing comes in, then removes it."""
    save = _dead_save_dir(where)
    _writer_at_unlink(monkeypatch, save, times=4)
    assert save.name in leftovers.sweep(str(where), _ALL)
    assert not save.exists()


def test_a_directory_that_keeps_growing_keeps_its_mark_for_a_later_run(
        where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that does not stop: the sweep gives up after a bounded time and leaves the directory marked, so that
    the next run, once the writer is gone, removes it (an unmarked one would only ever be removed empty)."""
    save = _dead_save_dir(where)
    _writer_at_unlink(monkeypatch, save, times=None)
    assert save.name not in leftovers.sweep(str(where), _ALL)
    assert (save / leftovers.MARK).exists()
    monkeypatch.undo()
    assert save.name in leftovers.sweep(str(where), _ALL)
    assert not save.exists()


def test_a_name_come_in_after_the_last_look_gets_the_mark_back(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's last name lands between the mark's removal and the rmdir: the directory is marked again (an
    unmarked one is only ever removed empty), and the next run removes it."""
    save = _dead_save_dir(where)
    unlink = os.unlink

    def racing(path: str, *args: object, **kwargs: object) -> None:
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]
        if path == leftovers.MARK:
            (save / "last").write_bytes(b"z")

    monkeypatch.setattr(os, "unlink", racing)
    assert save.name not in leftovers.sweep(str(where), _ALL)
    assert sorted(os.listdir(save)) == [leftovers.MARK, "last"]
    monkeypatch.undo()
    assert save.name in leftovers.sweep(str(where), _ALL)


def test_a_name_that_cannot_go_is_not_tried_for_ever(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the sweep cannot remove (EPERM) is no writer at work: one more look, and the directory is left,
    marked, after one pause, not after every pause the bound allows."""
    save = _dead_save_dir(where)
    unlink = os.unlink
    pauses: list[float] = []

    def stuck(path: str, *args: object, **kwargs: object) -> None:
        if path == "blob2":
            raise PermissionError(1, "injected")
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", stuck)
    monkeypatch.setattr(leftovers.time, "sleep", pauses.append)
    removed = leftovers.sweep(str(where), _ALL)
    monkeypatch.undo()
    assert save.name not in removed and sorted(os.listdir(save)) == [leftovers.MARK, "blob2"]
    assert len(pauses) <= 1


def test_a_directory_others_may_write_in_is_not_emptied(where: Path) -> None:
    """A directory another user could write in, wearing a name and a mark of cdisk's (they could have made both),
    is not a run's: nothing in it is removed."""
    save = _dead_save_dir(where)
    save.chmod(0o777)
    assert save.name not in leftovers.sweep(str(where), _ALL)
    assert sorted(os.listdir(save)) == [leftovers.MARK, "blob", "blob2", "blob3"]
