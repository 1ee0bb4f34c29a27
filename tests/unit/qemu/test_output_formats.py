"""The formats cdisk writes: the check of -O and -c (pure), the room bounds (pure), and those bounds held against
`du` of real qemu-img conversions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cdisk.core.errors import UsageError
from cdisk.core.qemu.output_formats import FORMATS, KIB, MIB, Layout, data_bound, is_format_name, output_format
from tests.images import sh

CHOICES = "use one of raw, qcow2, vmdk, vhdx, vpc, vdi, qed, parallels"


def test_the_formats_and_their_options() -> None:
    assert list(FORMATS) == ["raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed", "parallels"]
    assert {name: f.create_options(False) for name, f in FORMATS.items()} == {
        "raw": (), "qcow2": ("compat=1.1",), "vmdk": ("subformat=monolithicSparse", "adapter_type=lsilogic"),
        "vhdx": ("subformat=dynamic",), "vpc": ("subformat=dynamic", "force_size=on"), "vdi": (), "qed": (),
        "parallels": (),
    }
    assert FORMATS["vmdk"].create_options(True) == ("subformat=streamOptimized", "adapter_type=lsilogic")
    assert [name for name, f in FORMATS.items() if f.compressed is not None] == ["qcow2", "vmdk"]
    assert [name for name, f in FORMATS.items() if f.measurable] == ["raw", "qcow2"]
    assert [name for name, f in FORMATS.items() if not f.out_of_order] == ["qed"]


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_cdisk_writes_passes_the_check(name: str) -> None:
    assert output_format(name, False) is FORMATS[name]


@pytest.mark.parametrize(("name", "says"), [
    ("qcow3", "-O qcow3: cdisk does not write that format (did you mean qcow2?); " + CHOICES),
    ("QCOW2", "-O QCOW2: cdisk does not write that format (did you mean qcow2?); " + CHOICES),
    ("ext4", "-O ext4: cdisk does not write that format; " + CHOICES),
    ("", "-O : cdisk does not write that format; " + CHOICES),
    ("luks", "-O luks: a LUKS target needs a passphrase (qemu's key-secret), which cdisk does not take (write raw, "
             "then encrypt it with cryptsetup); " + CHOICES),
    ("qcow", "-O qcow: qcow (version 1) is kept by qemu to read old images only (did you mean qcow2?); " + CHOICES),
    ("dmg", "-O dmg: qemu-img reads dmg but cannot write it; " + CHOICES),
    ("nbd", "-O nbd: nbd is a qemu protocol or filter, not a disk format; " + CHOICES),
])
def test_a_format_cdisk_does_not_write_is_refused_by_name(name: str, says: str) -> None:
    with pytest.raises(UsageError) as refused:
        output_format(name, False)
    assert refused.value.message == says and refused.value.exit_code == 2


@pytest.mark.parametrize("name", ["qcow2", "vmdk"])
def test_compress_where_qemu_can(name: str) -> None:
    assert output_format(name, True) is FORMATS[name]


@pytest.mark.parametrize("name", ["raw", "vhdx", "vpc", "vdi", "qed", "parallels"])
def test_compress_where_qemu_cannot(name: str) -> None:
    with pytest.raises(UsageError) as refused:
        output_format(name, True)
    assert refused.value.message == (f"-c: qemu-img cannot compress {name}; drop -c, or write one of the formats it "
                                     "compresses: qcow2, vmdk (as streamOptimized)")


def test_format_names_a_qemu_img_user_types() -> None:
    assert all(is_format_name(name) for name in [*FORMATS, "luks", "qcow", "dmg"])
    assert not any(is_format_name(word) for word in ["quay.io/containerdisks/fedora:40", "vm.qcow2", "./raw", "",
                                                     "nbd", "QCOW2"])


def test_layout_room() -> None:
    vpc = FORMATS["vpc"].layout
    # 256 MiB disk, 3 units of data: 3 × 64 KiB, at most 3 blocks' bitmaps, 128 BAT entries of 4 bytes, fixed.
    assert vpc.room(256 * MIB, 3 * 64 * KIB) == 3 * 64 * KIB + 3 * 4 * KIB + 512 + MIB
    # a partial unit is a whole one; more units than blocks: one bitmap per block of the disk
    assert vpc.room(4 * MIB, 100 * 64 * KIB - 1) == 100 * 64 * KIB + 2 * 4 * KIB + 8 + MIB
    assert Layout(unit=MIB, fixed=0).room(10 * MIB, 0) == 0
    assert FORMATS["parallels"].layout.room(MIB, MIB) == MIB + 4 + 130 * MIB


def test_data_bound() -> None:
    assert data_bound(10 * MIB + 1, MIB, None) == 11 * MIB  # no count: the whole disk, in whole units
    assert data_bound(256 * MIB, MIB, (3, 64 * KIB)) == 3 * MIB  # each small cluster may touch its own unit
    assert data_bound(256 * MIB, 64 * KIB, (3, 2 * MIB)) == 6 * MIB  # each large cluster, whole
    assert data_bound(4 * MIB, MIB, (1000, 64 * KIB)) == 4 * MIB  # never more than the disk


def _disk(path: Path, writes: list[str], fmt: str = "qcow2") -> Path:
    sh("qemu-img", "create", "-q", "-f", fmt, path, "128M")
    if writes:
        sh("qemu-io", "-f", fmt, *(a for w in writes for a in ("-c", w)), path)
    return path


# Data as the room bound must see it: dense, 4 KiB in every MiB (a vdi or parallels unit each), 512 bytes in every
# 2 MiB (a vpc block each), 4 KiB in every 32 MiB (a vmdk grain table each).
PATTERNS = {
    "dense": ["write -P 0x11 0 128M"],
    "every-MiB": [f"write -P 0x22 {n << 20} 4k" for n in range(128)],
    "every-2-MiB": [f"write -P 0x33 {(n << 21) + 4096} 512" for n in range(64)],
    "every-32-MiB": [f"write -P 0x44 {(n << 25) + 65536} 4k" for n in range(4)],
}
ESTIMATED = [(name, compress) for name, f in FORMATS.items() if not f.measurable
             for compress in ((False, True) if f.compressed else (False,))]


@pytest.mark.needs("qemu-img", "qemu-io")
@pytest.mark.parametrize("source", ["qcow2", "raw"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_the_room_bound_holds_for_real_conversions(tmp_path: Path, pattern: str, source: str) -> None:
    """What each format cdisk cannot measure takes on disk (`du`) stays within its bound, from qemu-img check's
    count (or, for a raw disk, the whole disk) and from a qcow2 measure in the format's units alike."""
    disk = _disk(tmp_path / f"disk.{source}", PATTERNS[pattern], source)
    size = 128 * MIB
    allocation = None
    if source == "qcow2":
        checked = json.loads(sh("qemu-img", "check", "--output=json", disk, check=False).stdout)
        allocation = (int(checked.get("allocated-clusters", 0)), 64 * KIB)
    for name, compress in ESTIMATED:
        chosen = FORMATS[name]
        layout = chosen.layout_of(compress)
        out = tmp_path / f"out.{name}"
        options = chosen.create_options(compress)
        sh("qemu-img", "convert", "-f", source, "-O", name, *(["-o", ",".join(options)] if options else []),
           *(["-c"] if compress else ["-W"] if chosen.out_of_order else []), disk, out)
        taken = os.stat(out).st_blocks * 512
        measured = json.loads(sh("qemu-img", "measure", "--output=json", "-f", source, "-O", "qcow2", "-o",
                                 f"cluster_size={layout.unit}", disk).stdout)["required"]
        cheap = layout.room(size, data_bound(size, layout.unit, allocation))
        assert taken <= cheap, (name, compress, taken, cheap)
        assert taken <= layout.room(size, measured), (name, compress, taken, measured)
        out.unlink()


def test_a_target_named_for_another_format_is_warned_about() -> None:
    from cdisk.core.qemu.output_formats import suffix_mismatch

    assert suffix_mismatch("/srv/vm.qcow2", "raw") == ("TARGET /srv/vm.qcow2 is named .qcow2, but the output format "
                                                       "is raw: writing raw (for qcow2, pass -O qcow2)")
    assert suffix_mismatch("vm.VHD", "raw") == "TARGET vm.VHD is named .vhd, but the output format is raw: writing " \
                                               "raw (for vpc, pass -O vpc)"
    for target, name in [("vm.qcow2", "qcow2"), ("vm.img", "raw"), ("vm.img", "qcow2"), ("/dev/sdb", "raw"),
                         ("/srv/vm.d/disk", "vmdk"), ("vm", "raw"), ("vm.vhd", "vpc"), ("vm.raw", "raw")]:
        assert suffix_mismatch(target, name) is None, (target, name)
