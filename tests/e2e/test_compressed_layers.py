"""Image files whose layers are gzip- or zstd-compressed (skopeo's default, `podman save` without
`--uncompressed`): each layer decompressed once as a stream, the files that may be the disk copied out sparse
into anonymous files, a raw disk named as the raw target it already is, and every broken stream one line with
nothing left behind. Layers written here byte by byte, or made by the real skopeo and podman; results checked
with qemu-img compare.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import signal
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backports import zstd

from tests.helpers import Images, assert_one_line_error, cdisk, converted, same_disk
from tests.images import (
    TAR_END,
    Entry,
    docker_archive,
    layer_tar,
    make_disk,
    oci_layout,
    sh,
    tar_header,
    tar_member,
)

pytestmark = pytest.mark.needs("qemu-img", "qemu-io", "bwrap")

MiB = 1 << 20
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NAMED = "the decompressed disk is the raw file asked for: named, not converted"
DECOMPRESSING = "decompressing layer"
KINDS = ["gzip", "zstd"]
TRANSPORTS = ["oci", "oci-archive", "docker-archive"]
# 4 MiB that do not compress and hold no zero block: a raw disk whose copy cannot be a hole anywhere.
NOISE = random.Random(7).randbytes(4 * MiB)
# About 4 MiB that compress well: the compressed stream is all coded blocks, no stored ones.
TEXT = b"".join(b"line %d of a disk that compresses\n" % n for n in range(120_000))


def compress(kind: str, data: bytes) -> bytes:
    """`data` as one gzip member or one zstd frame (with its checksum, as podman's and skopeo's zstd writes it)."""
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    return zstd.compress(data, options={zstd.CompressionParameter.checksum_flag: 1})


def zstd_streamed(data: bytes, window_log: int) -> bytes:
    """One zstd frame written as a stream: its header declares the window asked for, not the content's size."""
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: window_log})
    return compressor.compress(data, mode=zstd.ZstdCompressor.CONTINUE) + compressor.flush()


def zstd_window(frame: bytes) -> int:
    """The window size a zstd frame's header declares (RFC 8878, 3.1.1.1.2)."""
    assert frame.startswith(ZSTD_MAGIC)
    assert not frame[4] & 0x20, "a single-segment frame: its window is its content's size"
    exponent, mantissa = frame[5] >> 3, frame[5] & 7
    base = 1 << (10 + exponent)
    return base + base // 8 * mantissa


def gzip_broken_midway(data: bytes) -> bytes:
    """`data` gzipped, with a deflate block of the invalid type 3 after its first half (byte-aligned there by a
    full flush): the decoder itself fails, before any checksum.
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    half = len(data) // 2
    head = deflate.compress(data[:half]) + deflate.flush(zlib.Z_FULL_FLUSH)
    return head + b"\x06" + deflate.compress(data[half:]) + deflate.flush()


def flipped(data: bytes, at: int | None = None, length: int = 4) -> bytes:
    """`data` with `length` bytes inverted from `at` (from the end when negative; by default its middle)."""
    changed = bytearray(data)
    at = len(data) // 2 if at is None else at % len(data)
    changed[at:at + length] = bytes(b ^ 0xFF for b in changed[at:at + length])
    return bytes(changed)


def image_file(transport: str, workdir: Path, layers: list[bytes]) -> str:
    """An image file of this transport with one image of these layer blobs (written as given), named as cdisk
    takes it.
    """
    if transport == "docker-archive":
        return f"docker-archive:{docker_archive(workdir, layers, 'localhost/vm:1')}"
    layout, _ = oci_layout(workdir, layers)
    if transport == "oci":
        return f"oci:{layout}"
    archive = layout.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    return f"oci-archive:{archive}"


def raw_disk(path: Path, size: str = "32M", pattern: int = 0x5A) -> Path:
    """A raw disk with a few MiB of data among large zero areas."""
    make_disk(path, "raw", size, pattern)
    sh("qemu-io", "-f", "raw", "-c", f"write -P {pattern} 8M 3M", path)
    return path


def disk_tar(disk: Path | bytes, name: str = "disk/disk.img") -> bytes:
    """A layer tar holding `disk` (a file, or its bytes) at `name`."""
    data = disk if isinstance(disk, bytes) else disk.read_bytes()
    return layer_tar([Entry("disk/", directory=True), Entry(name, data=data)])


def refused_leaving_nothing(source: str, target: Path, code: int, says: str, *args: str | Path) -> None:
    """`cdisk convert` fails in one line saying `says`, and leaves nothing at `target` or beside it."""
    before = sorted(os.listdir(target.parent))
    assert_one_line_error(cdisk("convert", "-q", *args, source, target), code, says)
    assert not os.path.lexists(target)
    assert sorted(os.listdir(target.parent)) == before


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def layer_heads(path: Path) -> list[bytes]:
    """The first 4 bytes of each layer blob of the one image in an OCI layout directory or oci-archive."""
    def heads(read: Callable[[str], bytes]) -> list[bytes]:
        def blob(digest: str) -> bytes:
            return read("blobs/sha256/" + digest.removeprefix("sha256:"))

        manifest = json.loads(blob(json.loads(read("index.json"))["manifests"][0]["digest"]))
        return [blob(layer["digest"])[:4] for layer in manifest["layers"]]

    if path.is_dir():
        return heads(lambda name: (path / name).read_bytes())
    with tarfile.open(path) as tar:
        members = {os.path.normpath(member.name): member for member in tar.getmembers()}

        def member(name: str) -> bytes:
            file = tar.extractfile(members[name])
            assert file is not None
            return file.read()

        return heads(member)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The directory the targets go to, apart from the image files."""
    made = tmp_path / "out"
    made.mkdir()
    return made


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the size given (another filesystem than the target's); each unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        result = sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            sh("umount", where)


# --- the disk, whatever file holds the image -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_qcow2_disk_converts(tmp_path: Path, out: Path, kind: str, transport: str) -> None:
    disk = make_disk(tmp_path / "vm.qcow2")
    source = image_file(transport, tmp_path, [compress(kind, disk_tar(disk))])
    result = converted(source, out / "vm.raw")
    assert f"{DECOMPRESSING} " in result.err and NAMED not in result.err
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_raw_disk_to_a_raw_file_is_named_sparse(tmp_path: Path, out: Path, kind: str, transport: str) -> None:
    disk = raw_disk(tmp_path / "vm.raw")
    source = image_file(transport, tmp_path, [compress(kind, disk_tar(disk))])
    result = converted(source, out / "vm.raw")
    assert NAMED in result.err and "converting" not in result.err
    assert same_disk(disk, "raw", out / "vm.raw", "raw")
    assert (out / "vm.raw").stat().st_size == 32 * MiB
    assert allocated(out / "vm.raw") <= 8 * MiB, "the zero areas were written, not left as holes"
    assert sorted(os.listdir(out)) == ["vm.raw"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_raw_disk_to_qcow2_is_converted(tmp_path: Path, out: Path, kind: str, transport: str) -> None:
    disk = raw_disk(tmp_path / "vm.raw")
    source = image_file(transport, tmp_path, [compress(kind, disk_tar(disk))])
    result = converted(source, out / "vm.qcow2", "-O", "qcow2")
    assert NAMED not in result.err
    assert same_disk(disk, "raw", out / "vm.qcow2", "qcow2")


@pytest.mark.parametrize("kind", KINDS)
def test_a_raw_disk_of_an_odd_size_is_named_as_long_as_qemu_img_converts_it(tmp_path: Path, out: Path,
                                                                          kind: str) -> None:
    # qemu reads a raw file in whole sectors: the named copy must be what a plain layer converts to.
    data = NOISE[:MiB + 1000]
    plain = converted(image_file("oci", tmp_path, [disk_tar(data)]), out / "plain.raw")
    named = converted(image_file("oci", tmp_path, [compress(kind, disk_tar(data))]), out / "named.raw")
    assert NAMED in named.err and NAMED not in plain.err
    assert (out / "named.raw").read_bytes() == (out / "plain.raw").read_bytes()


@pytest.mark.parametrize("stream", ["gzip-members", "zstd-frames", "zstd-skippable-frame"])
def test_a_stream_of_several_members_or_frames(tmp_path: Path, out: Path, stream: str) -> None:
    # The tar is cut in the middle of the disk's data; zstd:chunked puts skippable frames between frames.
    disk = make_disk(tmp_path / "vm.qcow2")
    tar = disk_tar(disk)
    cut = len(tar) // 2 + 123
    kind = stream.split("-")[0]
    between = struct.pack("<II", 0x184D2A50, 16) + b"skipped frame..." if stream == "zstd-skippable-frame" else b""
    layer = compress(kind, tar[:cut]) + between + compress(kind, tar[cut:])
    converted(image_file("oci", tmp_path, [layer]), out / "vm.raw")
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")


# --- layers upon layers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("lower", "upper"), [("plain", "gzip"), ("zstd", "plain"), ("gzip", "zstd")])
def test_an_upper_layer_replaces_the_disk(tmp_path: Path, out: Path, lower: str, upper: str) -> None:
    old, new = make_disk(tmp_path / "old.qcow2", pattern=0x11), make_disk(tmp_path / "new.qcow2", pattern=0x22)
    layers = [disk_tar(disk) if kind == "plain" else compress(kind, disk_tar(disk))
              for kind, disk in ((lower, old), (upper, new))]
    converted(image_file("oci", tmp_path, layers), out / "vm.raw")
    assert same_disk(new, "qcow2", out / "vm.raw", "raw")


@pytest.mark.parametrize("hiding", ["disk/.wh.old.qcow2", "disk/.wh..wh..opq"], ids=["whiteout", "opaque"])
def test_a_hidden_lower_disk_is_no_candidate(tmp_path: Path, out: Path, hiding: str) -> None:
    old, new = make_disk(tmp_path / "old.qcow2", pattern=0x11), make_disk(tmp_path / "new.qcow2", pattern=0x22)
    lower = compress("gzip", disk_tar(old, "disk/old.qcow2"))
    upper = compress("zstd", layer_tar([Entry("disk/", directory=True), Entry(hiding, data=b""),
                                        Entry("disk/new.qcow2", data=new.read_bytes())]))
    converted(image_file("oci", tmp_path, [lower, upper]), out / "vm.raw")
    assert same_disk(new, "qcow2", out / "vm.raw", "raw")


# --- a disk elsewhere than directly under /disk ---------------------------------------------------------


def test_path_to_a_file_outside_disk_is_copied_in_the_one_pass(tmp_path: Path, out: Path) -> None:
    disk = make_disk(tmp_path / "vm.qcow2")
    layer = compress("gzip", layer_tar([Entry("data/", directory=True),
                                        Entry("data/vm.qcow2", data=disk.read_bytes())]))
    result = converted(image_file("oci", tmp_path, [layer]), out / "vm.raw", "--path", "/data/vm.qcow2")
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")
    assert result.err.count(DECOMPRESSING) == 1


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_a_disk_reached_through_a_link_is_read_in_a_second_pass(tmp_path: Path, out: Path, link: str,
                                                                fmt: str) -> None:
    # /disk/disk.img is no regular file: the guess copies nothing, and the layer is read again for data/vm.
    disk = make_disk(tmp_path / f"vm.{fmt}", fmt) if fmt == "qcow2" else raw_disk(tmp_path / "vm.raw")
    linked = Entry("disk/disk.img", hardlink="data/vm") if link == "hardlink" else \
        Entry("disk/disk.img", symlink="../data/vm")
    layer = compress("zstd", layer_tar([Entry("data/", directory=True), Entry("data/vm", data=disk.read_bytes()),
                                        Entry("disk/", directory=True), linked]))
    result = converted(image_file("oci", tmp_path, [layer]), out / "vm.raw")
    assert same_disk(disk, fmt, out / "vm.raw", "raw")
    assert result.err.count(DECOMPRESSING) == 2
    assert (NAMED in result.err) == (fmt == "raw")


# --- streams refused: one line, nothing left ------------------------------------------------------------

TAR, TEXT_TAR = disk_tar(NOISE), disk_tar(TEXT)


def _half(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _trailing(kind: str, extra: bytes) -> Callable[[], bytes]:
    return lambda: compress(kind, TAR) + extra


# Each case: how its layer is made, and what the one line says.
REFUSALS: dict[str, tuple[Callable[[], bytes], str]] = {
    "gzip-cut-short": (lambda: _half(compress("gzip", TAR)), "cut short"),
    "zstd-cut-short": (lambda: _half(compress("zstd", TAR)), "cut short"),
    "gzip-invalid-deflate-block": (lambda: gzip_broken_midway(TEXT_TAR), "corrupt"),
    # Stored (not deflated) blocks: a changed byte of the disk reads on, only the CRC at the end tells.
    "gzip-wrong-crc": (lambda: flipped(gzip.compress(TAR, compresslevel=0, mtime=0), 3 * MiB, 1), "corrupt"),
    # Coded data broken in the middle of the disk's data.
    "zstd-corrupt": (lambda: flipped(compress("zstd", TEXT_TAR)), "corrupt"),
    "zstd-wrong-checksum": (lambda: flipped(compress("zstd", TAR), -1, 1), "corrupt"),
    "gzip-trailing-garbage": (_trailing("gzip", b"garbage!" * 64), "corrupt"),
    # Python's gzip skips zero padding after a member; Go's reader (podman's pull: "gzip: invalid header") does not.
    "gzip-trailing-zeros": (_trailing("gzip", bytes(1024)), "corrupt"),
    "zstd-trailing-garbage": (_trailing("zstd", b"garbage!" * 64), "corrupt"),
    "bzip2": (lambda: bz2.compress(TAR), "bzip2-compressed"),
    "xz": (lambda: lzma.compress(TAR), "xz-compressed"),
    "gzip-name-climbs-out": (lambda: compress("gzip", tar_member("../escape", b"x") + TAR),
                             "is refused: a name that climbs out of the image"),
    "zstd-header-after-a-zero-block": (lambda: compress("zstd", tar_member("disk/disk.img", NOISE) + bytes(512)
                                                        + tar_member("disk/late", b"x") + TAR_END),
                                       "is refused: a zero block followed by another header"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_broken_or_refused_layer_is_one_line_and_leaves_nothing(tmp_path: Path, out: Path, case: str) -> None:
    make, says = REFUSALS[case]
    refused_leaving_nothing(image_file("oci", tmp_path, [make()]), out / "vm.raw", 5, says)


def test_a_tar_refusal_names_its_place_in_the_uncompressed_tar(tmp_path: Path, out: Path) -> None:
    # The header after the disk's 512-byte header and 4 MiB of data.
    layer = compress("gzip", tar_member("disk/disk.img", NOISE) + tar_member("../escape", b"x") + TAR_END)
    refused_leaving_nothing(image_file("oci", tmp_path, [layer]), out / "vm.raw", 5,
                            f"at byte {512 + len(NOISE)} of its uncompressed tar")


def test_a_zstd_window_over_32_mib_is_refused(tmp_path: Path, out: Path) -> None:
    layer = zstd_streamed(TAR, 27)
    assert zstd_window(layer) == 128 * MiB
    refused_leaving_nothing(image_file("oci", tmp_path, [layer]), out / "vm.raw", 5, "window")


def test_a_zstd_window_of_32_mib_is_read(tmp_path: Path, out: Path) -> None:
    layer = zstd_streamed(TAR, 25)
    assert zstd_window(layer) == 32 * MiB
    converted(image_file("oci", tmp_path, [layer]), out / "vm.raw")
    assert (out / "vm.raw").read_bytes() == NOISE


def test_an_existing_target_is_untouched_when_the_layer_is_corrupt(tmp_path: Path, out: Path) -> None:
    target = out / "vm.raw"
    target.write_bytes(b"the disk that was there")
    make, _ = REFUSALS["gzip-wrong-crc"]
    result = cdisk("convert", "-q", "--force", image_file("oci", tmp_path, [make()]), target)
    assert_one_line_error(result, 5, "corrupt")
    assert target.read_bytes() == b"the disk that was there"
    assert sorted(os.listdir(out)) == ["vm.raw"]


# --- where the decompressed copy lives -------------------------------------------------------------------


def test_tmpdir_on_another_filesystem_converts(tmp_path: Path, out: Path, tmpfs: Callable[[str], Path]) -> None:
    disk = raw_disk(tmp_path / "vm.raw")
    elsewhere = tmpfs("64M")
    result = converted(image_file("oci", tmp_path, [compress("gzip", disk_tar(disk))]), out / "vm.raw",
                       "--tmpdir", elsewhere)
    assert NAMED not in result.err and "converting" in result.err
    assert same_disk(disk, "raw", out / "vm.raw", "raw")
    assert os.listdir(elsewhere) == []


def test_a_tmpdir_too_small_for_the_copy_is_one_line(tmp_path: Path, out: Path,
                                                     tmpfs: Callable[[str], Path]) -> None:
    small = tmpfs("1M")
    source = image_file("oci", tmp_path, [compress("zstd", TAR)])
    refused_leaving_nothing(source, out / "vm.raw", 6, "ran out of space", "--tmpdir", small)
    assert os.listdir(small) == []


# --- ls and verify ------------------------------------------------------------------------------------------


def test_ls_judges_compressed_candidates_by_their_header(tmp_path: Path) -> None:
    qcow2, raw = make_disk(tmp_path / "a.qcow2"), raw_disk(tmp_path / "b.raw", "16M")
    layer = compress("gzip", layer_tar([Entry("disk/", directory=True), Entry("disk/a.qcow2", data=qcow2.read_bytes()),
                                        Entry("disk/b.raw", data=raw.read_bytes())]))
    result = cdisk("ls", "--json", image_file("oci", tmp_path, [layer]))
    assert result.code == 0, result.err
    disks = {d["path"]: d for d in json.loads(result.out)["disks"]}
    assert sorted(disks) == ["/disk/a.qcow2", "/disk/b.raw"]
    assert [(d["format"], d["virtual_size"], d["judged_by"], d["refused"]) for _, d in sorted(disks.items())] == [
        # the qcow2 file fits in the head copied (1 MiB): whole, it is judged as convert judges it
        ("qcow2", 8 * MiB, "qemu-img", ""), ("raw", 16 * MiB, "header", "")]


def test_ls_copies_only_each_candidates_head(tmp_path: Path, tmpfs: Callable[[str], Path]) -> None:
    # Two 4 MiB candidates that do not compress, and 3 MiB to copy them to: their 1 MiB heads fit, they do not.
    layer = compress("zstd", layer_tar([Entry("disk/", directory=True), Entry("disk/a.raw", data=NOISE),
                                        Entry("disk/b.raw", data=NOISE[::-1])]))
    small, source = tmpfs("3M"), image_file("oci", tmp_path, [layer])
    result = cdisk("ls", "--json", "--tmpdir", small, source)
    assert result.code == 0, result.err
    assert [(d["path"], d["format"], d["file_size"]) for d in json.loads(result.out)["disks"]] == [
        ("/disk/a.raw", "raw", 4 * MiB), ("/disk/b.raw", "raw", 4 * MiB)]
    assert os.listdir(small) == []
    # convert copies the whole of one, which does not fit.
    whole = cdisk("convert", "-q", "--tmpdir", small, "--path", "/disk/a.raw", source, tmp_path / "a.raw")
    assert whole.code == 6 and "ran out of space" in whole.err, whole.err


def test_verify_reads_a_compressed_layer(tmp_path: Path, out: Path) -> None:
    disk = make_disk(tmp_path / "vm.qcow2")
    source = image_file("docker-archive", tmp_path, [compress("zstd", disk_tar(disk))])
    converted(source, out / "vm.raw")
    verdict = cdisk("verify", "--json", source, out / "vm.raw")
    assert verdict.code == 0 and json.loads(verdict.out)["identical"] is True, verdict.err
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x99 2M 4k", out / "vm.raw")
    verdict = cdisk("verify", "--json", source, out / "vm.raw")
    assert json.loads(verdict.out)["identical"] is False, verdict.err


# --- what the real tools write ----------------------------------------------------------------------------


@pytest.mark.needs("podman", "skopeo")
@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
@pytest.mark.parametrize("kind", KINDS)
def test_what_skopeo_compresses_converts_without_any_engine(images: Images, no_engines: dict[str, str],
                                                            tmp_path: Path, out: Path, kind: str,
                                                            transport: str) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    copy = tmp_path / f"copy-{kind}"
    sh("skopeo", "copy", "-q", "--dest-compress-format", kind, f"containers-storage:{name}", f"{transport}:{copy}")
    magic = GZIP_MAGIC if kind == "gzip" else ZSTD_MAGIC
    assert [head.startswith(magic) for head in layer_heads(copy)] == [True]
    converted(f"{transport}:{copy}", out / "vm.raw", env=no_engines)
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")


@pytest.mark.needs("podman")
@pytest.mark.parametrize(("fmt", "transport"), [("oci-archive", "oci-archive"), ("oci-dir", "oci")])
def test_what_podman_saves_compressed_converts_without_any_engine(images: Images, no_engines: dict[str, str],
                                                                  tmp_path: Path, out: Path, fmt: str,
                                                                  transport: str) -> None:
    disk = images.disk("vm.raw", "raw", "16M")
    name = images.build({"disk.raw": disk})
    saved = tmp_path / f"saved-{fmt}"
    sh("podman", "save", "-q", "--format", fmt, "-o", saved, name)
    heads = layer_heads(saved)
    assert heads and all(head.startswith((GZIP_MAGIC, ZSTD_MAGIC)) for head in heads), heads
    result = converted(f"{transport}:{saved}", out / "vm.raw", env=no_engines)
    assert NAMED in result.err
    assert same_disk(disk, "raw", out / "vm.raw", "raw")


# --- bounds a hostile layer meets ---------------------------------------------------------------------------


def test_many_files_under_disk_take_a_bounded_number_of_copies(tmp_path: Path) -> None:
    # 300 candidates, with fewer descriptors than that: only COPIES are held at once, the rest read again.
    disk = make_disk(tmp_path / "vm.qcow2")
    entries = [Entry("disk/", directory=True)] + [Entry(f"disk/f{n:03}", data=b"\x01" * 4096) for n in range(300)]
    entries.append(Entry("disk/vm.qcow2", data=disk.read_bytes()))
    source = image_file("oci", tmp_path, [compress("zstd", layer_tar(entries))])
    limited = ["sh", "-c", 'ulimit -n 200 && exec "$0" -m cdisk "$@"', sys.executable]
    listed = subprocess.run([*limited, "ls", "--json", source], capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    disks = json.loads(listed.stdout)["disks"]
    assert [d["judged_by"] for d in disks] == ["qemu-img"] * 8 + ["none"] * 293  # copied once, never again
    assert disks[-1]["path"] == "/disk/vm.qcow2" and disks[-1]["format"] is None
    out = tmp_path / "out"
    out.mkdir()
    written = subprocess.run([*limited, "convert", "-q", "--path", "/disk/vm.qcow2", source, out / "vm.raw"],
                             capture_output=True, text=True, check=False)
    assert written.returncode == 0, written.stderr
    assert same_disk(disk, "qcow2", out / "vm.raw", "raw")


def test_a_copy_is_never_a_standard_stream_of_qemu_img(tmp_path: Path) -> None:
    # With stdin closed, the first descriptor cdisk opens is 0, which qemu-img's stdin would replace.
    disk = make_disk(tmp_path / "vm.qcow2")
    layer = compress("gzip", layer_tar([Entry("disk/vm.qcow2", data=disk.read_bytes())]))
    source = image_file("oci", tmp_path, [layer])
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(["sh", "-c", 'exec <&- && exec "$0" -m cdisk convert -q -O qcow2 "$1" "$2"',
                             sys.executable, source, str(out / "vm.qcow2")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert same_disk(disk, "qcow2", out / "vm.qcow2", "qcow2")


def test_a_stream_that_ends_inside_the_last_padding_has_ended_as_a_blob_does(tmp_path: Path) -> None:
    # Go reads no further than the last member's padding: a tar cut there (no end blocks) is whole.
    disk = make_disk(tmp_path / "vm.qcow2")
    data = disk.read_bytes() + b"\x07" * 100  # not a multiple of 512: padding follows the data
    tar = tar_member("disk/vm.qcow2", data)[:512 + len(data) + 50]
    for kind in KINDS:
        out = tmp_path / f"out-{kind}"
        out.mkdir()
        result = cdisk("convert", "-q", "-O", "qcow2", image_file("oci", tmp_path, [compress(kind, tar)]),
                       out / "vm.qcow2")
        assert result.code == 0, result.err
        assert same_disk(disk, "qcow2", out / "vm.qcow2", "qcow2")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_decompressing_leaves_nothing(tmp_path: Path, signum: int) -> None:
    # An 8 GiB raw disk of zeros: seconds of decompressing, and a copy that takes no room.
    size = 8 << 30
    compressor = zstd.ZstdCompressor()
    zeros = bytes(64 * MiB)
    parts = [compressor.compress(tar_header("disk/vm.raw", size=size), mode=zstd.ZstdCompressor.CONTINUE)]
    parts += [compressor.compress(zeros, mode=zstd.ZstdCompressor.CONTINUE) for _ in range(size // len(zeros))]
    parts.append(compressor.compress(bytes(1024)) + compressor.flush())
    source = image_file("oci", tmp_path, [b"".join(parts)])
    out = tmp_path / "out"
    out.mkdir()
    # -v: the step lines (shown piped only with it) say when decompressing has begun
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", "convert", "-v", source, out / "vm.raw"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if DECOMPRESSING in line:
            break
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "interrupted" in err
    assert list(out.iterdir()) == []


def test_several_candidates_are_counted_before_they_are_copied(tmp_path: Path,
                                                                tmpfs: Callable[[str], Path]) -> None:
    # Three disks of 3 MiB of data each in one compressed layer, a tmpdir with room for one: the pass copies the
    # first only and convert says there are several (it used to copy every one whole, and run out of space first).
    disks = [raw_disk(tmp_path / f"d{n}.raw", "12M", 0x30 + n) for n in range(3)]
    entries = [Entry("disk/", directory=True)] + [Entry(f"disk/d{n}.raw", data=d.read_bytes())
                                                  for n, d in enumerate(disks)]
    source = image_file("oci", tmp_path, [compress("gzip", layer_tar(entries))])
    small = tmpfs("6M")
    refused_leaving_nothing(source, tmp_path / "out.raw", 4, "several", "--tmpdir", small)
    assert list(small.iterdir()) == []
