"""Odd layer tars, written byte by byte: cdisk's save method against what `podman image mount` shows.

Each image is pulled from an OCI layout (podman unpacks it with Go's archive/tar and containers/storage)
and `podman save` gives the very same layer bytes back (tar-split). Either cdisk converts exactly the
file podman shows at the disk's path, or it refuses a construct tar readers take differently, or podman
itself refuses to pull the layer and so does cdisk.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdisk.core.errors import UnsafeImageError
from cdisk.core.layers.saved import read_layer
from cdisk.core.oci.blob import LayerBlob
from tests.helpers import Images, assert_one_line_error, cdisk, same_disk
from tests.images import TAR_END, gnu_long, oci_image_blobs, pax_header, sh, tar_member

Layers = Callable[[bytes, bytes], list[bytes]]


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    from tests.images import make_disk

    workdir = tmp_path_factory.mktemp("disks")
    return (make_disk(workdir / "a.qcow2", pattern=0xAA).read_bytes(),
            make_disk(workdir / "b.qcow2", pattern=0xBB).read_bytes())


def load(images: Images, layers: list[bytes]) -> str:
    name = oci_image_blobs(images.workdir, layers)
    images.names.append(name)
    return name


def podman_shows(name: str, path: str) -> Iterator[Path]:
    """The file at `path` in podman's own mount of the image (unmounted afterwards)."""
    root = sh("podman", "image", "mount", name).stdout.strip()
    try:
        yield Path(root, path)
    finally:
        sh("podman", "image", "unmount", name, check=False)


def layer(*members: bytes) -> bytes:
    return b"".join(members) + TAR_END


AGREE: dict[str, tuple[Layers, str, str]] = {
    # id: (layers from disks A and B, where podman shows the disk, which disk it is)
    "dotdot-name-replaces": (
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a)), layer(tar_member("x/../disk/disk.qcow2", b))],
        "disk/disk.qcow2", "B"),
    "dotdot-whiteout-hides": (
        lambda a, b: [layer(tar_member("disk/a.qcow2", a), tar_member("disk/disk.qcow2", b)),
                      layer(tar_member("x/../disk/.wh.disk.qcow2"))],
        "disk/a.qcow2", "A"),
    "base-256-mode": (  # Python's tarfile stops reading at this header; Go reads it
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a, fields={100: b"\x81\x00\x00\x00\x00\x00\x01\xa4"}))],
        "disk/disk.qcow2", "A"),
    "1f8b-is-not-gzip": (
        lambda a, b: [layer(tar_member(b"\x1f\x8b-junk", b"j"), tar_member("disk/disk.qcow2", a))],
        "disk/disk.qcow2", "A"),
    "empty-layer-blob": (lambda a, b: [b"", layer(tar_member("disk/disk.qcow2", a))], "disk/disk.qcow2", "A"),
    "global-header-ignored": (
        lambda a, b: [layer(pax_header([(b"comment", b"x"), (b"mtime", b"1")], b"g", b"pax_global_header"),
                            tar_member("disk/disk.qcow2", a))],
        "disk/disk.qcow2", "A"),
    "ustar-prefix": (lambda a, b: [layer(tar_member("disk.qcow2", a, prefix=b"disk"))], "disk/disk.qcow2", "A"),
    "junk-after-end": (lambda a, b: [layer(tar_member("disk/disk.qcow2", a)) + b"junk" * 300],
                       "disk/disk.qcow2", "A"),
    "opaque-in-upper-layer": (
        lambda a, b: [layer(tar_member("disk/a.qcow2", a)),
                      layer(tar_member("disk/.wh..wh..opq"), tar_member("disk/disk.qcow2", b))],
        "disk/disk.qcow2", "B"),
    "whiteout-under-whiteout": (
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a), tar_member("disk/b/c.qcow2", b)),
                      layer(tar_member("disk/.wh.b"), tar_member("disk/b/.wh.c.qcow2"))],
        "disk/disk.qcow2", "A"),
    "cve-2024-6232-record": (
        lambda a, b: [layer(pax_header([(b"comment", b"1 " * 100_000)]), tar_member("disk/disk.qcow2", a))],
        "disk/disk.qcow2", "A"),
}


@pytest.mark.parametrize("case", list(AGREE))
def test_save_method_reads_what_podman_shows(images: Images, disks: tuple[bytes, bytes], tmp_path: Path,
                                              case: str) -> None:
    build, path, which = AGREE[case]
    expected = disks[0] if which == "A" else disks[1]
    name = load(images, build(*disks))
    shown = tmp_path / "podman.qcow2"
    for mounted in podman_shows(name, path):
        shown.write_bytes(mounted.read_bytes())
    assert shown.read_bytes() == expected
    result = cdisk("convert", "-q", "--method", "save", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(shown, "qcow2", tmp_path / "out.raw", "raw")


def test_a_whiteouts_parent_hides_a_lower_file(images: Images, disks: tuple[bytes, bytes], tmp_path: Path) -> None:
    name = load(images, [layer(tar_member("disk/disk.qcow2", disks[0]), tar_member("img", disks[1])),
                         layer(tar_member("img/.wh.x"))])
    for mounted in podman_shows(name, "img"):
        assert mounted.is_dir()
    result = cdisk("convert", "-q", "--method", "save", "--path", "/img", name, tmp_path / "out.raw")
    assert result.code == 4 and "/img is not a regular file in the image (it is a dir)" in result.err


REFUSED: dict[str, tuple[Layers, str]] = {
    # id: (layers, what cdisk says); podman pulls each of these, so some reading exists
    "gnu-sparse-name-on-a-file": (
        lambda a, b: [layer(pax_header([(b"GNU.sparse.name", b"disk/other.qcow2")]), tar_member("disk/disk.qcow2", a))],
        "GNU.sparse records on a member that is not sparse"),
    "pax-path-and-gnu-longname": (
        lambda a, b: [layer(pax_header([(b"path", b"disk/other.qcow2")]), gnu_long(b"disk/disk.qcow2"),
                            tar_member("x", a))],
        "a PAX path and a GNU long name for one member"),
    "prefix-without-ustar-magic": (
        lambda a, b: [layer(tar_member("disk.qcow2", a, magic=bytes(6), version=bytes(2), prefix=b"disk"))],
        "ustar name prefix"),
    "global-header-with-path": (
        lambda a, b: [layer(pax_header([(b"path", b"disk/other.qcow2")], b"g"), tar_member("disk/disk.qcow2", a))],
        "PAX global header with a path record"),
    "overlay-xattr": (
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a)),
                      layer(pax_header([(b"SCHILY.xattr.trusted.overlay.opaque", b"y")]),
                            tar_member("disk/", kind=b"5"), tar_member("disk/b.qcow2", b))],
        "an xattr overlayfs acts on"),
    "whiteout-and-entry-in-one-layer": (
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a)),
                      layer(tar_member("disk/.wh.disk.qcow2"), tar_member("disk/disk.qcow2", b))],
        "an entry for a path the same layer whited out"),
    "hard-link-climbing-out": (
        lambda a, b: [layer(tar_member("data/a", a),
                            tar_member("disk/disk.qcow2", kind=b"1", linkname="../../data/a"))],
        "a hard link to '../../data/a', outside the image"),
    "member-through-a-symlink": (
        lambda a, b: [layer(tar_member("data/x", b"x"), tar_member("disk", kind=b"2", linkname="data"),
                            tar_member("disk/disk.qcow2", a))],
        "a member under a symlink of the same layer"),
    "char-device-0-0": (
        lambda a, b: [layer(tar_member("disk/disk.qcow2", a), tar_member("disk/b.qcow2", b)),
                      layer(tar_member("disk/b.qcow2", kind=b"3"))],
        "a character device 0/0"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_constructs_read_two_ways_are_refused(images: Images, disks: tuple[bytes, bytes], tmp_path: Path,
                                              case: str) -> None:
    build, says = REFUSED[case]
    name = load(images, build(*disks))
    for root in podman_shows(name, ""):
        assert os.listdir(root)  # podman did unpack it, one way
    for command in ("convert", "ls"):
        target = [tmp_path / "out.raw"] if command == "convert" else []
        # The save method reads the layer tars; read in place, podman's unpacked view is what podman shows.
        result = cdisk(command, "-q", "--method", "save", name, *target)
        assert_one_line_error(result, 5, says)
        assert "rebuild the image" in result.err
    assert not (tmp_path / "out.raw").exists()


PODMAN_REFUSES: dict[str, Layers] = {
    "unparsable-mode": lambda a, b: [layer(tar_member("disk/disk.qcow2", a, fields={100: b"abcdefg\x00"}))],
    "zero-block-then-header": lambda a, b: [layer(tar_member("x", b"x"), bytes(512), tar_member("disk/disk.qcow2", a))],
    "old-gnu-sparse": lambda a, b: [layer(tar_member("disk/disk.qcow2", a, kind=b"S", magic=b"ustar ",
                                                     version=b" \x00"))],
    "contiguous-file": lambda a, b: [layer(tar_member("disk/disk.qcow2", a, kind=b"7"))],
    "hard-link-to-a-lower-layer": lambda a, b: [layer(tar_member("data/a", a)),
                                                layer(tar_member("disk/disk.qcow2", kind=b"1", linkname="data/a"))],
    "global-header-named-like-a-member": lambda a, b: [
        layer(tar_member("disk/disk.qcow2", a), pax_header([(b"comment", b"x")], b"g", b"disk/disk.qcow2"))],
}


@pytest.mark.parametrize("case", list(PODMAN_REFUSES))
def test_what_podman_refuses_to_pull_cdisk_refuses(images: Images, disks: tuple[bytes, bytes], tmp_path: Path,
                                                   case: str) -> None:
    layers = PODMAN_REFUSES[case](*disks)
    with pytest.raises(subprocess.CalledProcessError):
        load(images, layers)
    refusals = []
    for index, data in enumerate(layers):
        blob = tmp_path / f"{index:064x}"
        blob.write_bytes(data)
        try:
            read_layer(LayerBlob(blob, 0, len(data), f"sha256:{blob.name}"), index)
        except UnsafeImageError as error:
            refusals.append(error.message)
    assert len(refusals) == 1 and refusals[0].count("\n") == 0
