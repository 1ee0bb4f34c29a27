"""Reads pinned against a concurrent removal (issue 23): an `rmi` run by another job while cdisk walks an image's
layer directories waits for the walk (podman: containers/storage's layer lock, held shared) or is seen and told as
one line (docker) — never a disk read from a store half removed. The removal is started, for real, at the moment
the walk begins (the first lookup in the layer directories)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdisk.core.engines.store_pin import pinned
from cdisk.core.errors import ImageError
from cdisk.core.reading.pipeline import opened_disk, resolve
from cdisk.core.request import ImageRequest, Method, ReadRequest
from cdisk.core.tree.layer_dirs import LayerDirsTree
from tests.helpers import Images, Stages
from tests.images import Entry, sh


@pytest.fixture(autouse=True)
def in_process_env() -> Iterator[None]:
    """plumbum copies the environment once, when first imported: the runs in this process see this test's (its
    TMPDIR, the suite's DOCKER_HOST), not the first in-process test's."""
    from plumbum import local

    with local.env(**os.environ):
        yield


@pytest.fixture(params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_host")
    return str(request.param)


def _on_first_lookup(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    lookup = LayerDirsTree.lookup
    fired: list[bool] = []

    def first(self: LayerDirsTree, path: str):  # type: ignore[no-untyped-def]
        if not fired:
            fired.append(True)
            action()
        return lookup(self, path)

    monkeypatch.setattr(LayerDirsTree, "lookup", first)


def _same_as(fd: int, original: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", f"/dev/fd/{fd}",
                           str(original)], pass_fds=(fd,), check=False).returncode == 0


def test_podman_waits_with_its_rmi_until_the_disk_is_open(images: Images, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    original = images.disk(pattern=0x5D)
    name = images.build({"disk.qcow2": original})
    removals: list[subprocess.Popen[bytes]] = []

    def rmi() -> None:
        removals.append(subprocess.Popen(["podman", "rmi", "-f", name], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE))
        time.sleep(2)  # time enough for an rmi that does not wait to remove the layers
        assert removals[0].poll() is None, "podman removed the layers while cdisk walked them"

    _on_first_lookup(monkeypatch, rmi)
    request = ImageRequest(name, engine="podman")
    with opened_disk(request, ReadRequest(Method.LAYERS), None, Stages()) as disk:
        [removal] = removals
        assert _same_as(disk.source.pass_fds[0], original)  # the descriptor keeps the bytes the rmi removes
    assert removal.wait(timeout=120) == 0, removal.stderr.read() if removal.stderr else ""
    assert sh("podman", "image", "exists", name, check=False).returncode == 1


def test_docker_removing_the_image_during_the_walk_is_one_line(images: Images, engine: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    name = images.build({"disk.qcow2": images.disk(pattern=0x5E)})
    def rmi() -> None:
        sh(engine, "rmi", "-f", name)

    _on_first_lookup(monkeypatch, rmi)
    if engine == "podman":  # podman's rmi would wait for the walk: let the walk's lock wait for nothing
        monkeypatch.setattr("cdisk.core.engines.store_pin.lock_shared", lambda *args: None)
    request = ImageRequest(name, engine=engine)
    with pytest.raises(ImageError) as raised, opened_disk(request, ReadRequest(Method.LAYERS), None, Stages()):
        pytest.fail("a disk was opened from an image removed during the walk")
    assert str(raised.value).startswith(f"{name} was removed or replaced in {engine}'s store while cdisk read it")
    assert raised.value.exit_code == 3


def test_the_lock_is_the_one_podman_takes(images: Images) -> None:
    """What the pin holds is what podman's removal waits for (its lock file and kind), on this podman."""
    name = images.build({"disk.qcow2": images.disk(pattern=0x5F)})
    _, image = resolve(ImageRequest(name, engine="podman"), Stages())
    with pinned(image):
        removal = subprocess.Popen(["podman", "rmi", "-f", name], stdout=subprocess.DEVNULL)
        time.sleep(2)
        assert removal.poll() is None, "podman's rmi did not wait for the shared layer lock"
    assert removal.wait(timeout=120) == 0


def test_verify_tells_an_image_removed_during_its_check_from_a_damaged_one(images: Images, engine: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cdisk.core.commands import verify
    from cdisk.core.layers import tar_split

    name = images.build({"disk.qcow2": images.disk(pattern=0x60)})
    reassemble = tar_split.reassemble
    removals: list[subprocess.Popen[bytes]] = []

    def removed_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not removals:
            removals.append(subprocess.Popen([engine, "rmi", "-f", name], stdout=subprocess.DEVNULL))
            if engine == "docker":
                removals[0].wait(timeout=120)  # nothing in docker's store holds it back
            else:
                time.sleep(2)
                assert removals[0].poll() is None, "podman removed the layers while cdisk checked them"
        return reassemble(*args, **kwargs)

    monkeypatch.setattr(tar_split, "reassemble", removed_first)
    request = ImageRequest(name, engine=engine)
    if engine == "podman":  # the removal waits for the check: the image checks intact
        assert verify.verify_image(request, Stages()).intact
    else:
        with pytest.raises(ImageError, match=f"{name} was removed or replaced in docker's store"):
            verify.verify_image(request, Stages())
    assert removals[0].wait(timeout=120) == 0


@pytest.mark.parametrize("meanwhile", ["kept below another image", "removed and loaded again"])
def test_a_mount_whose_image_is_removed_meanwhile_is_given_back(images: Images, meanwhile: str) -> None:
    """`podman rmi -f` of a mounted image whose top layer another image still holds removes the image but not the
    layer, nor its mount: cdisk gives the mount back all the same (detached, where no podman command reaches it);
    an image loaded again meanwhile (same ID) leaves nothing to give back."""
    from cdisk.core.engines.podman import _is_mount_point, mount_image

    base = [Entry("disk/disk.raw", data=b"\x5a" * 65536)]
    name = images.layers(base)
    if meanwhile == "kept below another image":
        images.layers(base, [Entry("etc/", directory=True), Entry("etc/hostname", data=b"above\n")])
    _, image = resolve(ImageRequest(name, engine="podman"), Stages())
    with mount_image(image.id, name) as root:
        assert _is_mount_point(root)
        sh("podman", "rmi", "-f", name)
        if meanwhile == "removed and loaded again":
            images.layers(base)
    assert not _is_mount_point(root), "the image's mount outlived cdisk"
