"""A disk judged before anything is written: its format told by its bytes, past raw confirmed by the real
qemu-img (info, then check for the allocated clusters); raw sized without running qemu-img at all. Disks made
by the real `qemu-img create` and `convert`, read in place through a descriptor.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.disk.inspection import InspectedDisk, inspect_disk
from cdisk.core.errors import ToolError, UnsafeImageError
from cdisk.core.sources.in_place import InPlaceFile
from cdisk.core.sources.tar_member import TarMember
from tests.tool_fakes import QemuImgFakes

MiB = 1 << 20
REFUSE_HINT = "rebuild the image with a self-contained disk (e.g. `qemu-img convert -O qcow2`)"


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def file_spec(fmt: str, fd: int) -> str:
    return f'json:{{"driver": "{fmt}", "backing": null, "file": {{"driver": "file", "filename": "/dev/fd/{fd}"}}}}'


@pytest.fixture
def opened() -> Iterator[Callable[[Path], InPlaceFile]]:
    """Opens a disk file as the layers and mount methods do: an `InPlaceFile` over a descriptor, closed after."""
    fds: list[int] = []

    def open_disk(path: Path) -> InPlaceFile:
        fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return InPlaceFile("/disk/disk.img", fds[-1], os.path.getsize(path))

    try:
        yield open_disk
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture
def no_qemu_img(tmp_path: Path) -> Iterator[None]:
    """A PATH, as cdisk's tool lookup sees it, on which no qemu-img is to be found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with local.env(PATH=str(empty)):
        yield


def raw_with_data(path: Path) -> Path:
    """An 8 MiB raw disk with data in 64 KiB at 0, 4 KiB at 1 MiB and 128 KiB at 3 MiB (zeros elsewhere)."""
    with path.open("wb") as f:
        f.truncate(8 * MiB)
        for offset, length in ((0, 64 << 10), (1 * MiB, 4 << 10), (3 * MiB, 128 << 10)):
            f.seek(offset)
            f.write(b"\xab" * length)
    return path


def test_raw_is_its_length_rounded_up_to_a_sector_without_running_qemu_img(tmp_path: Path, no_qemu_img: None,
                                                                          opened: Callable[[Path], InPlaceFile],
                                                                          ) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\x01" * 1000)
    source = opened(disk)
    assert inspect_disk(source) == InspectedDisk(source, "raw", 1024, file_spec("raw", source.fd), None)


def test_a_raw_member_of_a_tar_is_its_slice_rounded_up_to_a_sector(tmp_path: Path, no_qemu_img: None) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(b"H" * 512 + b"\x02" * 1000 + bytes(24))
    member = TarMember("/disk/disk.img", str(layer), 512, 1000)
    inspected = inspect_disk(member)
    assert (inspected.format, inspected.virtual_size, inspected.allocation) == ("raw", 1024, None)
    assert json.loads(inspected.spec.removeprefix("json:")) == {
        "driver": "raw", "offset": 512, "size": 1024, "file": {"driver": "file", "filename": str(layer)},
        "backing": None}


@pytest.mark.needs("qemu-img")
def test_a_raw_disk_qemu_img_made(tmp_path: Path, opened: Callable[[Path], InPlaceFile]) -> None:
    disk = tmp_path / "disk.img"
    qemu_img("create", "-q", "-f", "raw", disk, "3M")
    source = opened(disk)
    assert inspect_disk(source) == InspectedDisk(source, "raw", 3 * MiB, file_spec("raw", source.fd), None)


@pytest.mark.needs("qemu-img")
def test_past_raw_qemu_img_confirms_the_disk(tmp_path: Path, opened: Callable[[Path], InPlaceFile],
                                             no_qemu_img: None) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", disk, "8M")
    with pytest.raises(ToolError, match=r"^qemu-img is not installed; install it \(Debian/Ubuntu: apt-get install "
                                        r"qemu-utils\)$"):
        inspect_disk(opened(disk))


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize(("options", "allocation"), [((), (4, 65536)), (("-o", "cluster_size=4096"), (49, 4096))],
                         ids=["64k-clusters", "4k-clusters"])
def test_a_qcow2_has_its_virtual_size_and_allocated_clusters_from_qemu_img(
        tmp_path: Path, opened: Callable[[Path], InPlaceFile], options: tuple[str, ...],
        allocation: tuple[int, int]) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *options, raw_with_data(tmp_path / "data.raw"), disk)
    source = opened(disk)
    assert inspect_disk(source) == InspectedDisk(source, "qcow2", 8 * MiB, file_spec("qcow2", source.fd), allocation)


@pytest.mark.needs("qemu-img")
def test_a_qcow2_with_a_backing_file_is_refused(tmp_path: Path, opened: Callable[[Path], InPlaceFile]) -> None:
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "base.qcow2", "8M")
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", disk)
    with pytest.raises(UnsafeImageError) as refused:
        inspect_disk(opened(disk))
    assert refused.value.message == ("the disk is a qcow2 with a backing file ('base.qcow2'); cdisk refuses it "
                                     f"because qemu-img would open files outside the image; {REFUSE_HINT}")
    assert refused.value.exit_code == 5


@pytest.mark.needs("qemu-img")
def test_a_qcow2_with_a_data_file_is_refused(tmp_path: Path, opened: Callable[[Path], InPlaceFile]) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", disk, "8M")
    with pytest.raises(UnsafeImageError, match=r"^the disk is a qcow2 with an external data file; cdisk refuses it"):
        inspect_disk(opened(disk))


@pytest.mark.needs("qemu-img", "bwrap")
@pytest.mark.parametrize(("said", "named"), [({"backing-filename": "/etc/shadow"}, "/etc/shadow"),
                                             ({"format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}},
                                              "/dev/sda")],
                         ids=["backing", "data-file"])
def test_a_file_named_only_as_qemu_img_reads_the_disk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 opened: Callable[[Path], InPlaceFile],
                                                                 said: dict[str, object], named: str) -> None:
    # The header checks leave nothing for this second line to catch in a real disk: qemu-img's answer is faked.
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", disk, "8M")
    answer = json.dumps({"format": "qcow2", "virtual-size": 8 * MiB, "cluster-size": 65536, **said})
    # check runs beside info (inspect_disk runs both at once) and says the disk is corrupted: info's refusal is
    # still the answer, as when check ran only after info.
    fakes = QemuImgFakes(tmp_path / "fakes", {"info": f"print({answer!r}); sys.exit(0)", "check": "sys.exit(2)"})
    monkeypatch.setenv("PATH", fakes.env["PATH"])
    with local.env(PATH=fakes.env["PATH"]), pytest.raises(UnsafeImageError) as refused:
        inspect_disk(opened(disk))
    assert refused.value.message == f"/disk/disk.img names another file ({named}); cdisk refuses it: {REFUSE_HINT}"
    assert sorted(fakes.subcommands()) == ["check", "info"]


@pytest.mark.needs("qemu-img", "bwrap")
@pytest.mark.parametrize(("fmt", "virtual_size"), [("vdi", 8 * MiB), ("vpc", 8390656)])
def test_formats_without_counted_clusters_have_no_allocation(tmp_path: Path, opened: Callable[[Path], InPlaceFile],
                                                             fmt: str, virtual_size: int) -> None:
    # vdi's check counts no clusters; vpc has no check (exit 63). vpc's size is qemu-img's (whole CHS geometry).
    disk = tmp_path / f"disk.{fmt}"
    qemu_img("create", "-q", "-f", fmt, disk, "8M")
    source = opened(disk)
    assert inspect_disk(source) == InspectedDisk(source, fmt, virtual_size, file_spec(fmt, source.fd), None)
