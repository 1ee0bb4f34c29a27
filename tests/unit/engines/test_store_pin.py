"""`engines.store_pin`: a podman store's layer lock held shared as podman's readers hold it (a writer waits, a
reader does not), and a store changed under the walk told as one line — on stores laid out as the engines lay them
out, in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdisk.core.engines.seam import Image
from cdisk.core.engines.store_pin import pinned
from cdisk.core.errors import DiskNotFoundError, ImageError

_LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
kind = fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH
if sys.argv[3] == "try":
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
    except OSError:
        print("busy", flush=True)
    else:
        print("taken", flush=True)
    sys.exit(0)
fcntl.lockf(fd, kind)
print("held", flush=True)
sys.stdin.read()
"""


def _podman_store(root: Path, layers: int = 2) -> Image:
    dirs = []
    for n in range(layers):
        diff = root / "overlay" / f"layer{n}" / "diff"
        diff.mkdir(parents=True)
        dirs.append(str(diff))
    (root / "overlay-layers").mkdir()
    (root / "overlay-layers" / "layers.lock").touch()
    return Image("localhost/x:1", "0" * 64, "", "amd64", 0, ("sha256:a",) * layers, store="overlay",
                 layer_dirs=tuple(reversed(dirs)), engine="podman")


def _docker_store(root: Path) -> tuple[Image, Path]:
    diff = root / "overlay2" / "cache1" / "diff"
    diff.mkdir(parents=True)
    record = root / "image" / "overlay2" / "imagedb" / "content" / "sha256" / ("1" * 64)
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    return Image("x:1", "1" * 64, "", "amd64", 0, ("sha256:a",), store="overlay2", layer_dirs=(str(diff),),
                 engine="docker"), record


def _locker(lock: Path, kind: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _LOCKER, str(lock), kind, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_a_writer_of_the_store_waits_while_the_layers_are_read(tmp_path: Path) -> None:
    image = _podman_store(tmp_path)
    lock = tmp_path / "overlay-layers" / "layers.lock"
    with pinned(image):
        writer = _locker(lock, "ex", "try")
        assert writer.communicate(timeout=30)[0] == "busy\n"
        reader = _locker(lock, "sh", "try")
        assert reader.communicate(timeout=30)[0] == "taken\n"
    after = _locker(lock, "ex", "try")
    assert after.communicate(timeout=30)[0] == "taken\n"


def test_a_lock_held_by_a_writer_is_waited_for_within_a_bound(tmp_path: Path) -> None:
    image = _podman_store(tmp_path)
    writer = _locker(tmp_path / "overlay-layers" / "layers.lock", "ex", "hold")
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "held\n"
        told: list[str] = []
        with pytest.raises(ImageError, match=r"stayed locked by another program for 1 s"), \
                pinned(image, told.append, wait=1.2):
            pytest.fail("read while a writer held the lock")
        assert len(told) == 1 and "waiting for the lock of podman's layer store" in told[0]
    finally:
        writer.communicate("", timeout=30)


def test_a_lock_released_meanwhile_lets_the_read_go_on(tmp_path: Path) -> None:
    image = _podman_store(tmp_path)
    writer = _locker(tmp_path / "overlay-layers" / "layers.lock", "ex", "hold")
    assert writer.stdout is not None and writer.stdout.readline() == "held\n"
    assert writer.stdin is not None
    writer.stdin.close()  # the writer ends: its lock goes with it
    with pinned(image, wait=30):
        pass
    writer.wait(timeout=30)


def test_a_store_without_a_lock_file_is_still_checked(tmp_path: Path) -> None:
    image = _podman_store(tmp_path)
    (tmp_path / "overlay-layers" / "layers.lock").unlink()
    with pytest.raises(ImageError, match=r"was removed or replaced in podman's store while cdisk read it"), \
            pinned(image):
        os.rename(image.layer_dirs[0], image.layer_dirs[0] + ".gone")
        os.mkdir(image.layer_dirs[0])


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_a_layer_directory_replaced_during_the_walk_is_one_line(tmp_path: Path, engine: str) -> None:
    image = _podman_store(tmp_path) if engine == "podman" else _docker_store(tmp_path)[0]
    with pytest.raises(ImageError) as raised, pinned(image):
        os.rename(image.layer_dirs[-1], str(tmp_path / "elsewhere"))
        os.mkdir(image.layer_dirs[-1])
    assert str(raised.value) == (f"{image.reference} was removed or replaced in {engine}'s store while cdisk read it "
                                 "(an rmi or prune by another job?); run cdisk again")


def test_docker_deleting_the_image_record_during_the_walk_is_seen(tmp_path: Path) -> None:
    image, record = _docker_store(tmp_path)
    with pytest.raises(ImageError, match="was removed or replaced in docker's store"), pinned(image):
        record.unlink()  # dockerd deletes the record first, then releases the layers


def test_an_image_gone_before_the_walk_is_one_line(tmp_path: Path) -> None:
    image, _ = _docker_store(tmp_path)
    os.rmdir(image.layer_dirs[0])
    with pytest.raises(ImageError, match="was removed or replaced"), pinned(image):
        pytest.fail("walked an image that is gone")


def test_a_refusal_caused_by_the_removal_is_told_as_the_removal(tmp_path: Path) -> None:
    image, record = _docker_store(tmp_path)
    with pytest.raises(ImageError, match="was removed or replaced"), pinned(image):
        record.unlink()
        raise DiskNotFoundError("no disk under /disk/")


def test_a_refusal_of_an_intact_image_stands(tmp_path: Path) -> None:
    image, _ = _docker_store(tmp_path)
    with pytest.raises(DiskNotFoundError, match="no disk under"), pinned(image):
        raise DiskNotFoundError("no disk under /disk/")


def test_layer_directories_gone_before_the_choice_are_the_removal(tmp_path: Path) -> None:
    # As root, a directory gone used to read "its layer directories are not readable by this user" (exit 7).
    from cdisk.core.engines.podman import PODMAN
    from cdisk.core.reading.methods import choose_reading, layers_view
    from cdisk.core.request import Method

    image = _podman_store(tmp_path)
    os.rmdir(image.layer_dirs[0])
    with pytest.raises(ImageError, match="was removed or replaced in podman's store"):
        choose_reading(Method.AUTO, writes=True, image=image, engine=PODMAN)
    with pytest.raises(ImageError, match="was removed or replaced in podman's store"):
        layers_view(PODMAN, image)


def test_a_layer_directory_removed_and_made_again_during_the_walk_is_seen(tmp_path: Path) -> None:
    # podman loads an image again at the same paths (its layer IDs are the layers' own), and ext4 often hands the
    # freed inode out again: the new directory's ctime tells it apart.
    image = _podman_store(tmp_path)
    (tmp_path / "overlay-layers" / "layers.lock").unlink()  # no lock to hold: the check alone
    with pytest.raises(ImageError, match="was removed or replaced in podman's store"), pinned(image):
        shutil.rmtree(image.layer_dirs[0])
        time.sleep(0.01)
        os.makedirs(image.layer_dirs[0])
