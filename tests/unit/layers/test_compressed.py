"""A compressed layer read in one pass: its members indexed as a plain tar's are, the files `Wanted` names copied
out sparse into anonymous files as the stream goes by (at most `room` of them), and every failure leaving no
copy behind. Layers written here (gzip and zstd), read from real files through descriptors.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import os
import random
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

from cdisk.core.disk.wanted import Wanted
from cdisk.core.errors import TargetError, UnsafeImageError
from cdisk.core.layers.compressed import Copy, DecompressedLayer, anonymous_file, read_compressed
from cdisk.core.layers.unpack import members_from_tar
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.progress import NoProgress
from cdisk.core.tar_headers import read_entries
from cdisk.core.tree.merged import DIR, FILE, LayerMember
from tests.images import TAR_END, Entry, layer_tar, pax_header, tar_member

MiB = 1 << 20
DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
KINDS = ["gzip", "zstd"]
NOISE = random.Random(11).randbytes(3 * MiB)  # no zero block anywhere: a copy of it has no hole
DISK = NOISE[:10_000]
ADVICE = "rebuild the image with podman build, buildah or docker, or pull it again"


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    return zstd.compress(data, options={zstd.CompressionParameter.checksum_flag: 1})


def data_offsets(tar: bytes) -> dict[str, int]:
    """Where each regular member's data starts, as Python's tarfile reads the tar (a second opinion)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {member.name: member.offset_data for member in archive.getmembers() if member.isfile()}


def open_fds() -> set[str]:
    """This process's open descriptors (not the one that listed them, closed by then)."""
    listed = os.listdir("/proc/self/fd")
    return {fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")}


def contents(copy: Copy) -> bytes:
    return os.pread(copy.fd, os.fstat(copy.fd).st_size + 1, 0)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


Blob = Callable[..., LayerBlob]
Read = Callable[..., DecompressedLayer]


class Layers:
    """Layer blobs of given bytes, each held by a descriptor (as engines hand them out) at an offset of a file
    with other bytes around it; and the layers read from them into `directory`."""

    def __init__(self, workdir: Path, directory: Path) -> None:
        self.workdir, self.directory = workdir, directory
        self.fds: list[int] = []
        self.read_layers: list[DecompressedLayer] = []

    def blob(self, data: bytes, before: bytes = b"\x1f\x8b\x08junk", after: bytes = b"trailing junk") -> LayerBlob:
        path = self.workdir / f"blob-{len(self.fds)}"
        path.write_bytes(before + data + after)
        self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return LayerBlob(Path(f"/dev/fd/{self.fds[-1]}"), len(before), len(data), DIGEST, fd=self.fds[-1])

    def read(self, blob: LayerBlob, kind: str, wanted: Wanted, **options: Any) -> DecompressedLayer:
        self.read_layers.append(read_compressed(blob, 0, kind, wanted, str(self.directory), NoProgress(),
                                                **options))
        return self.read_layers[-1]


@pytest.fixture
def copies_dir(tmp_path: Path) -> Path:
    made = tmp_path / "copies"
    made.mkdir()
    return made


@pytest.fixture
def layers(tmp_path: Path, copies_dir: Path) -> Iterator[Layers]:
    """After the test, every layer read is closed; then no descriptor but the blobs' is left open, and nothing
    named in the copies' directory."""
    before = open_fds()
    made = Layers(tmp_path, copies_dir)
    try:
        yield made
        for layer in made.read_layers:
            layer.close()
        assert open_fds() == before | {str(fd) for fd in made.fds}
        assert os.listdir(copies_dir) == []
    finally:
        for fd in made.fds:
            os.close(fd)


@pytest.fixture
def blob(layers: Layers) -> Blob:
    return layers.blob


@pytest.fixture
def read(layers: Layers) -> Read:
    return layers.read


def layer(*entries: Entry) -> bytes:
    return layer_tar([Entry("disk/", directory=True), *entries])


def under_disk(path: str) -> bool:
    return path.startswith("disk/") and path.count("/") == 1


# --- members and copies ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_disk_files_are_copied_and_the_members_are_a_plain_tars(kind: str, blob: Blob,
                                                                     read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK), Entry("etc/os-release", data=b"ID=vm\n"),
                Entry("data/other.img", data=NOISE[:3000]), Entry("disk/link", symlink="disk.img"))
    offsets = data_offsets(tar)
    done = read(blob(compress(kind, tar)), kind, Wanted.disk(None))
    assert done.members == members_from_tar(read_entries(io.BytesIO(tar), len(tar)), 0)
    assert LayerMember("disk/disk.img", FILE, 0, offsets["disk/disk.img"], len(DISK)) in done.members
    assert list(done.copies) == [offsets["disk/disk.img"]]
    copy = done.copies[offsets["disk/disk.img"]]
    assert (copy.complete, copy.linkable) == (True, True)
    assert contents(copy) == padded(DISK)  # as long as the member, rounded up to whole sectors


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_is_read_only_never_a_standard_stream_and_nameless(kind: str, blob: Blob, copies_dir: Path,
                                                                  read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK))
    (copy,) = read(blob(compress(kind, tar)), kind, Wanted.disk(None)).copies.values()
    assert copy.fd >= 3 and fcntl.fcntl(copy.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with pytest.raises(OSError) as refused:
        os.write(copy.fd, b"x")
    assert refused.value.errno == errno.EBADF
    assert os.listdir(copies_dir) == []


def test_a_path_asked_for_is_copied_alone_as_cleaned(blob: Blob, read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK), Entry("./data//x/../other.img", data=NOISE[:3000]))
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk("/data/other.img"))
    assert list(done.copies) == [data_offsets(tar)["./data//x/../other.img"]]
    assert contents(done.copies[data_offsets(tar)["./data//x/../other.img"]]) == padded(NOISE[:3000])


def test_a_member_asked_for_by_offset_is_copied_wherever_it_lies(blob: Blob,
                                                                 read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK), Entry("etc/os-release", data=b"ID=vm\n"))
    at = data_offsets(tar)["etc/os-release"]
    done = read(blob(compress("zstd", tar)), "zstd", Wanted.at(at, None))
    assert list(done.copies) == [at] and contents(done.copies[at]) == padded(b"ID=vm\n")


def test_a_sparse_member_is_never_copied(blob: Blob, read: Read) -> None:
    sparse = (pax_header([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                          (b"GNU.sparse.name", b"disk/sparse.img"), (b"GNU.sparse.realsize", b"4096")])
              + tar_member("disk/GNUSparseFile.0/sparse.img", b"1\n0\n4096\n".ljust(512, b"\0") + NOISE[:4096]))
    tar = tar_member("disk/disk.img", DISK) + sparse + TAR_END
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk(None))
    at = 512 + len(padded(DISK)) + 1024 + 512  # after the disk: the PAX header and its records, the member's header
    assert LayerMember("disk/sparse.img", FILE, 0, at, 4096, sparse=True) in done.members
    assert list(done.copies) == [512]


def test_nothing_wanted_copies_nothing(blob: Blob, read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK))
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk("elsewhere/disk.img"))
    assert done.copies == {} and [m.path for m in done.members] == ["disk", "disk/disk.img"]


def test_a_limit_keeps_the_head_of_a_larger_file_and_all_of_a_smaller_one(blob: Blob,
                                                                         read: Read) -> None:
    tar = layer(Entry("disk/disk.img", data=DISK), Entry("disk/small.img", data=DISK[:700]))
    offsets = data_offsets(tar)
    done = read(blob(compress("gzip", tar)), "gzip", Wanted(under_disk, limit=1000))
    head, small = done.copies[offsets["disk/disk.img"]], done.copies[offsets["disk/small.img"]]
    assert (head.complete, contents(head)) == (False, padded(DISK[:1000]))
    assert (small.complete, contents(small)) == (True, padded(DISK[:700]))
    assert LayerMember("disk/disk.img", FILE, 0, offsets["disk/disk.img"], len(DISK)) in done.members


def test_all_zero_blocks_are_left_as_holes(blob: Blob, read: Read) -> None:
    data = bytearray(3 * MiB + 100)  # a whole zero chunk, zero blocks between data, a short zero tail
    data[:4096] = NOISE[:4096]
    data[1536 << 10:(1536 << 10) + 4096] = NOISE[4096:8192]
    data[3 * MiB - 10:3 * MiB] = NOISE[:10]
    tar = layer(Entry("disk/disk.img", data=bytes(data)))
    (copy,) = read(blob(compress("gzip", tar)), "gzip", Wanted.disk(None)).copies.values()
    assert contents(copy) == padded(bytes(data))
    assert os.fstat(copy.fd).st_blocks * 512 == 3 * 4096


def test_a_copy_is_never_a_standard_stream_even_when_one_is_free(tmp_path: Path) -> None:
    # In a child whose standard streams are closed: the copy must not take one of them, which a child's stdio
    # replaces (a plain dup would hand out descriptor 2 here).
    layer_file = tmp_path / "layer.gz"
    layer_file.write_bytes(compress("gzip", layer(Entry("disk/disk.img", data=DISK))))
    script = (
        "import os\n"
        "from pathlib import Path\n"
        "from cdisk.core.disk.wanted import Wanted\n"
        "from cdisk.core.layers.compressed import read_compressed\n"
        "from cdisk.core.oci.blob import LayerBlob\n"
        "from cdisk.core.progress import NoProgress\n"
        f"fd = os.open({str(layer_file)!r}, os.O_RDONLY)\n"
        "report = os.dup(1)\n"
        "os.close(0); os.close(1); os.close(2)\n"
        f"blob = LayerBlob(Path(f'/dev/fd/{{fd}}'), 0, os.fstat(fd).st_size, {DIGEST!r}, fd=fd)\n"
        f"done = read_compressed(blob, 0, 'gzip', Wanted.disk(None), {str(tmp_path)!r}, NoProgress())\n"
        "os.write(report, b' '.join(b'%d' % copy.fd for copy in done.copies.values()))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert int(ran.stdout) >= 3


# --- room: at most so many copies at a time ----------------------------------------------------------------------

def test_room_bounds_the_copies_but_never_a_member_asked_by_offset(blob: Blob,
                                                                  read: Read) -> None:
    names = [f"disk/{letter}.img" for letter in "abcde"]
    tar = layer(*(Entry(name, data=NOISE[:600 + index]) for index, name in enumerate(names)))
    offsets = [data_offsets(tar)[name] for name in names]
    wanted = Wanted(under_disk, None, frozenset({offsets[4]}))
    done = read(blob(compress("gzip", tar)), "gzip", wanted, room=2)
    assert sorted(done.copies) == [offsets[0], offsets[1], offsets[4]]
    assert contents(done.copies[offsets[4]]) == padded(NOISE[:604])


def test_no_room_copies_only_what_is_asked_by_offset(blob: Blob, read: Read) -> None:
    tar = layer(Entry("disk/a.img", data=DISK), Entry("disk/b.img", data=DISK[:600]))
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk(None), room=0)
    assert done.copies == {}


def test_a_later_file_of_the_same_path_replaces_its_copy(blob: Blob, read: Read) -> None:
    # The fixture's check that no descriptor is left proves the replaced copy closed.
    # `/disk/a.img` is another name to tar-split (which refuses a name twice) but the same file once unpacked.
    tar = layer(Entry("disk/a.img", data=DISK[:600]), Entry("disk/b.img", data=DISK[:700]),
                Entry("/disk/a.img", data=DISK[:800]), Entry("disk/c.img", data=DISK[:900]))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        first_a, b, second_a, c = [m.offset_data for m in archive.getmembers() if m.isfile()]
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk(None), room=2)
    assert sorted(done.copies) == [b, second_a]  # c finds no room: a's first copy is gone, not held
    assert contents(done.copies[second_a]) == padded(DISK[:800])
    assert first_a not in done.copies and c not in done.copies


def test_a_copy_asked_by_offset_is_kept_when_its_path_comes_again(blob: Blob,
                                                                  read: Read) -> None:
    tar = layer(Entry("disk/a.img", data=DISK[:600]), Entry("/disk/a.img", data=DISK[:800]))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        first, second = [m.offset_data for m in archive.getmembers() if m.isfile()]
    done = read(blob(compress("gzip", tar)), "gzip", Wanted(under_disk, None, frozenset({first})))
    assert sorted(done.copies) == [first, second]
    assert contents(done.copies[first]) == padded(DISK[:600])


# --- a disk artifact's layer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_an_artifacts_layer_is_the_disk_copied_whole(kind: str, blob: Blob,
                                                     read: Read) -> None:
    done = read(blob(compress(kind, DISK)), kind, Wanted.disk(None), disk_name="vm.qcow2")
    assert done.members == [LayerMember("disk", DIR, 0), LayerMember("disk/vm.qcow2", FILE, 0, 0, len(DISK))]
    assert list(done.copies) == [0] and contents(done.copies[0]) == padded(DISK)


def test_an_artifacts_layer_not_wanted_is_only_measured(blob: Blob, read: Read) -> None:
    done = read(blob(compress("gzip", DISK)), "gzip", Wanted.disk("disk/other.img"), disk_name="vm.qcow2")
    assert done.copies == {}
    assert done.members == [LayerMember("disk", DIR, 0), LayerMember("disk/vm.qcow2", FILE, 0, 0, len(DISK))]


def test_an_artifacts_layer_without_room_is_copied_only_when_asked_by_offset(
        blob: Blob, read: Read) -> None:
    assert read(blob(compress("gzip", DISK)), "gzip", Wanted.disk(None), disk_name="vm.img", room=0).copies == {}
    assert list(read(blob(compress("gzip", DISK)), "gzip", Wanted.at(0, None), disk_name="vm.img",
                     room=0).copies) == [0]


def test_an_artifacts_layer_with_a_limit_keeps_the_head_and_the_whole_size(
        blob: Blob, read: Read) -> None:
    done = read(blob(compress("zstd", DISK)), "zstd", Wanted(under_disk, limit=1000), disk_name="vm.img")
    assert done.members[1] == LayerMember("disk/vm.img", FILE, 0, 0, len(DISK))
    assert (done.copies[0].complete, contents(done.copies[0])) == (False, padded(DISK[:1000]))


def test_an_artifacts_layer_that_is_a_tar_is_read_as_one(blob: Blob, read: Read) -> None:
    tar = layer(Entry("disk/inside.img", data=DISK))
    done = read(blob(compress("gzip", tar)), "gzip", Wanted.disk(None), disk_name="vm.img")
    assert [m.path for m in done.members] == ["disk", "disk/inside.img"]
    assert list(done.copies) == [data_offsets(tar)["disk/inside.img"]]


# --- refusals, with nothing left behind --------------------------------------------------------------------------

@pytest.mark.parametrize(("wanted", "at"), [(Wanted.disk(None), 4024), (Wanted.disk("elsewhere"), 512)],
                         ids=["copying", "skipping"])
def test_a_layer_cut_inside_a_member_is_refused(blob: Blob, read: Read,
                                                wanted: Wanted, at: int) -> None:
    cut = layer(Entry("disk/disk.img", data=DISK))[:1024 + 3000]
    with pytest.raises(UnsafeImageError) as refused:
        read(blob(compress("gzip", cut)), "gzip", wanted)
    assert refused.value.message == (f"layer 0123456789ab is refused: the layer ends inside a member's data at byte "
                                     f"{at} of its uncompressed tar; {ADVICE}")


def test_a_member_that_climbs_out_is_refused_after_a_copy_was_made(blob: Blob,
                                                                   read: Read) -> None:
    tar = tar_member("disk/disk.img", DISK) + tar_member("../escape", b"x") + TAR_END
    with pytest.raises(UnsafeImageError) as refused:
        read(blob(compress("zstd", tar)), "zstd", Wanted.disk(None))
    assert refused.value.message == ("layer 0123456789ab is refused: a name that climbs out of the image "
                                     f"('../escape') at byte {512 + len(padded(DISK))} of its uncompressed tar; "
                                     f"{ADVICE}")


def test_a_stream_that_fails_its_checksum_at_the_end_leaves_no_copy(blob: Blob,
                                                                    read: Read) -> None:
    # The CRC is checked at the stream's end, megabytes after the disk was copied.
    stream = bytearray(compress("gzip", layer(Entry("disk/disk.img", data=DISK), Entry("var/big", data=NOISE))))
    stream[-8] ^= 0xFF
    with pytest.raises(UnsafeImageError, match=r"^layer 0123456789ab's gzip stream is corrupt"):
        read(blob(bytes(stream)), "gzip", Wanted.disk(None))


def test_a_directory_that_cannot_hold_copies_is_a_target_error(blob: Blob, tmp_path: Path) -> None:
    held = blob(compress("gzip", layer(Entry("disk/disk.img", data=DISK))))
    before = open_fds()
    with pytest.raises(TargetError) as refused:
        read_compressed(held, 0, "gzip", Wanted.disk(None), str(tmp_path / "gone"), NoProgress())
    assert refused.value.message == (f"cannot make a temp file in {tmp_path / 'gone'}: No such file or directory; "
                                     "pass --tmpdir with a writable directory")
    assert refused.value.exit_code == 6
    assert open_fds() == before


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_directory_is_a_target_error_with_nothing_left(blob: Blob, small_tmpfs: Path) -> None:
    tar = layer(Entry("disk/disk.img", data=NOISE))  # 3 MiB that do not compress, no hole: more than it holds
    held = blob(compress("gzip", tar))
    before = open_fds()
    with pytest.raises(TargetError) as refused:
        read_compressed(held, 0, "gzip", Wanted.disk(None), str(small_tmpfs), NoProgress())
    assert refused.value.message == (f"{small_tmpfs} ran out of space while decompressing layer 0123456789ab; free "
                                     "some space or pass --tmpdir on a larger filesystem (nothing was left behind)")
    assert open_fds() == before
    assert os.listdir(small_tmpfs) == [] and os.statvfs(small_tmpfs).f_bfree == os.statvfs(small_tmpfs).f_blocks


# --- anonymous files ---------------------------------------------------------------------------------------------

def test_an_anonymous_file_has_no_name_and_can_be_given_one(copies_dir: Path) -> None:
    fd, linkable = anonymous_file(str(copies_dir))
    try:
        assert linkable and os.listdir(copies_dir) == []
        assert os.pwrite(fd, b"data", 0) == 4
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)
    assert os.listdir(copies_dir) == []


@pytest.mark.parametrize("refusal", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
def test_without_o_tmpfile_a_named_file_is_unlinked_at_once(copies_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             refusal: int) -> None:
    # No filesystem without O_TMPFILE is at hand: its refusal is injected (as vfat or an old NFS answer).
    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: int, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(refusal, os.strerror(refusal))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("cdisk.core.layers.compressed.os.open", no_tmpfile)
    fd, linkable = anonymous_file(str(copies_dir))
    try:
        assert not linkable and os.listdir(copies_dir) == []
        assert os.pwrite(fd, b"data", 0) == 4 and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_another_refusal_of_o_tmpfile_is_a_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as refused:
        anonymous_file(str(tmp_path / "gone"))
    assert refused.value.message == (f"cannot make a temp file in {tmp_path / 'gone'}: No such file or directory; "
                                     "pass --tmpdir with a writable directory")
