"""The formats cdisk writes (`-O`), each with the options a VM host expects and the room it takes: a fixed list.

A leaf: `core/request.py` checks a request against it before any pull, `qemu_img` builds the `-o` options from
it, the room check estimates from it. It imports nothing of cdisk but the errors.

Per format (qemu-img 7.2 to 10):
- raw: no options; the only format a block device takes.
- qcow2: `compat=1.1` (qemu's default, pinned: the level every KVM host of the last decade reads); `-c` compresses.
- vmdk: `subformat=monolithicSparse` (one growable file that VMware Workstation, Fusion, VirtualBox and qemu open
  as it is, and that `vmkfstools -i` imports on ESXi), `adapter_type=lsilogic` (the SCSI controller VMware gives
  Linux guests; qemu's default, ide, caps the geometry and ESXi attaches it to IDE only). With `-c`:
  `subformat=streamOptimized`, the compressed vmdk an OVA carries and vSphere imports (qemu compresses only that
  subformat: `-c` on monolithicSparse is silently uncompressed).
- vhdx: `subformat=dynamic` (Hyper-V's growable disk; block size as qemu chooses it for the size).
- vpc: `subformat=dynamic,force_size=on`: the virtual size stays exactly the disk's (without it qemu rounds it to
  a CHS geometry, and Azure and Hyper-V see another size); Azure wants a fixed VHD, which cdisk does not write.
- vdi: growable (`static=off`), as VirtualBox creates them.
- qed: no options; written in order (no `-W`: qemu 7.2's qed asserts under out-of-order writes).
- parallels: no options (Parallels Desktop, Virtuozzo's ploop).
Refused by name: luks (needs a secret cdisk does not take) and qcow (version 1, kept by qemu for old images only:
`-O qcow` is far likelier a slip for qcow2 than a wish). Everything else qemu-img knows cannot be written (bochs,
cloop, dmg, vvfat) or is no image format (file, nbd, …).

The room a format takes when qemu-img cannot measure it (`qemu-img measure` knows raw, qcow2 and luks only):
`Layout` bounds it from the disk's data counted in the format's allocation units. Each bound below was read in
qemu's block drivers and checked against `du` of real conversions (tests/unit/qemu/test_output_formats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from cdisk.core.errors import UsageError

KIB = 1 << 10
MIB = 1 << 20


@dataclass(frozen=True)
class Layout:
    """How a format takes room: data in units of `unit` bytes (a unit holding any data is written whole), `per_block`
    bytes of metadata for each `block`-byte span of the disk that holds data (at most one per unit of data), one
    byte of tables per `table_divisor` bytes of the disk's size (0: none) and `fixed` bytes besides.
    """

    unit: int = 64 * KIB
    block: int = 0
    per_block: int = 0
    table_divisor: int = 0
    fixed: int = MIB

    def room(self, virtual_size: int, data: int) -> int:
        """At most the bytes a file of this format takes on disk, for a disk of `virtual_size` whose data fill
        `data` bytes counted in whole units (`data_bound`)."""
        units = -(-data // self.unit)
        blocks = min(units, -(-virtual_size // self.block)) if self.block else 0
        tables = -(-virtual_size // self.table_divisor) if self.table_divisor else 0
        return units * self.unit + blocks * self.per_block + tables + self.fixed


def data_bound(virtual_size: int, unit: int, allocation: tuple[int, int] | None) -> int:
    """At most the bytes, in whole `unit`s, that hold a disk's data: every allocated cluster (`allocation`: their
    number and size, as qemu-img check counts them) touches at most `max(cluster, unit)` bytes of units; without
    a count, the whole disk."""
    whole = -(-virtual_size // unit) * unit
    if allocation is None:
        return whole
    clusters, cluster_size = allocation
    return min(whole, clusters * max(cluster_size, unit))


@dataclass(frozen=True)
class OutputFormat:
    """One format cdisk writes: qemu's driver name, its `-o` options (uncompressed and with `-c`; `compressed`
    None where qemu cannot compress it), whether `qemu-img measure` knows it, and its `Layout` otherwise (with `-c`,
    `compressed_layout` where it differs), and whether qemu-img may write it out of order.
    """

    name: str
    options: tuple[str, ...] = ()
    compressed: tuple[str, ...] | None = None
    measurable: bool = False
    layout: Layout = Layout()
    compressed_layout: Layout | None = None
    out_of_order: bool = True  # qemu-img convert -W is safe (qed's allocation asserts under it in qemu 7.2)

    def create_options(self, compress: bool) -> tuple[str, ...]:
        """The `-o` options for a target of this format, compressed or not."""
        return (self.compressed or ()) if compress else self.options

    def layout_of(self, compress: bool) -> Layout:
        """How a target of this format, compressed or not, takes room."""
        return (self.compressed_layout or self.layout) if compress else self.layout


# The monolithicSparse vmdk: 64 KiB grains written whole; a grain table (2 KiB per 32 MiB) and its redundant copy
# in one 4 KiB block per 32 MiB that holds data; the two grain directories (4 bytes per 32 MiB each), header and
# descriptor.
_VMDK = Layout(unit=64 * KIB, block=32 * MIB, per_block=8 * KIB, table_divisor=4 * MIB, fixed=MIB)
# streamOptimized: each grain deflated (at most 64 KiB + 31 bytes) behind a 12-byte marker, in whole sectors; the
# grain tables written at the end behind markers.
_VMDK_STREAM = Layout(unit=64 * KIB, block=64 * KIB, per_block=KIB, table_divisor=8 * KIB, fixed=MIB)

FORMATS: dict[str, OutputFormat] = {f.name: f for f in (
    OutputFormat("raw", measurable=True),
    OutputFormat("qcow2", ("compat=1.1",), ("compat=1.1",), measurable=True),
    OutputFormat("vmdk", ("subformat=monolithicSparse", "adapter_type=lsilogic"),
                 ("subformat=streamOptimized", "adapter_type=lsilogic"), layout=_VMDK, compressed_layout=_VMDK_STREAM),
    # Blocks of 8 to 64 MiB, written only where the data is (the file stays sparse around it); an 8-byte BAT
    # entry per MiB at most; header and metadata regions (1.2 MiB in all), and the 1 MiB log, written as qemu goes.
    OutputFormat("vhdx", ("subformat=dynamic",),
                 layout=Layout(unit=64 * KIB, table_divisor=128 * KIB, fixed=3 * MIB)),
    # 2 MiB blocks written only where the data is, each behind its sector bitmap (a 4 KiB block of the file
    # system); a 4-byte BAT entry per block; header and footers.
    OutputFormat("vpc", ("subformat=dynamic", "force_size=on"),
                 layout=Layout(unit=64 * KIB, block=2 * MIB, per_block=4 * KIB, table_divisor=512 * KIB, fixed=MIB)),
    # 1 MiB blocks written whole (zeros around the data); a 4-byte map entry per block.
    OutputFormat("vdi", layout=Layout(unit=MIB, table_divisor=256 * KIB, fixed=MIB)),
    # 64 KiB clusters written whole; an L2 table of 256 KiB per 2 GiB that holds data; L1 and header. In order:
    # under -W, qemu 7.2 aborts in qed_aio_write_alloc (`s->allocating_acb == NULL`) on scattered data.
    OutputFormat("qed", layout=Layout(unit=64 * KIB, block=2 << 30, per_block=256 * KIB, fixed=MIB),
                 out_of_order=False),
    # 1 MiB clusters; a 4-byte BAT entry per cluster; and qemu preallocates the file 128 MiB ahead while it
    # writes (prealloc-size, cut back when it closes): that much must be free too.
    OutputFormat("parallels", layout=Layout(unit=MIB, table_divisor=256 * KIB, fixed=130 * MIB)),
)}
NAMES = tuple(FORMATS)

# Formats qemu-img knows that cdisk refuses by name, with why and what to do instead.
_REFUSED = {
    "luks": "a LUKS target needs a passphrase (qemu's key-secret), which cdisk does not take (write raw, then "
            "encrypt it with cryptsetup)",
    "qcow": "qcow (version 1) is kept by qemu to read old images only (did you mean qcow2?)",
    "bochs": "qemu-img reads bochs but cannot write it",
    "cloop": "qemu-img reads cloop but cannot write it",
    "dmg": "qemu-img reads dmg but cannot write it",
    "vvfat": "vvfat is a directory served as a FAT disk, not a file qemu-img writes",
}
# qemu-img's names that are no disk format (protocols, filters): a format typed after -f, or given to -O, is
# told apart from an image name or a path by this list and the two above.
_NOT_FORMATS = frozenset({
    "file", "host_device", "host_cdrom", "nbd", "nfs", "ssh", "http", "https", "ftp", "ftps", "iscsi", "iser",
    "gluster", "rbd", "nvme", "null-co", "null-aio", "blkdebug", "blkverify", "blklogwrites", "quorum", "throttle",
    "compress", "copy-on-read", "copy-before-write", "preallocate", "replication", "snapshot-access",
})
_COMPRESSIBLE = tuple(f.name for f in FORMATS.values() if f.compressed is not None)


# What a file's suffix says its format is, as VM hosts name them (.vhd is qemu's vpc; .img says nothing).
_SUFFIXES = {".raw": "raw", ".qcow2": "qcow2", ".vmdk": "vmdk", ".vhdx": "vhdx", ".vhd": "vpc", ".vdi": "vdi",
             ".qed": "qed", ".hds": "parallels"}


def suffix_mismatch(target: str, name: str) -> str | None:
    """A warning when TARGET's suffix names another format than `-O name` writes (`vm.qcow2` written raw: -O
    was forgotten); None where the suffix says nothing or agrees."""
    suffix = target[target.rfind("."):].lower() if "." in target.rpartition("/")[2] else ""
    named = _SUFFIXES.get(suffix)
    if named is None or named == name:
        return None
    return (f"TARGET {target} is named {suffix}, but the output format is {name}: writing {name} (for {named}, "
            f"pass -O {named})")


def choices() -> str:
    """The formats cdisk writes, as a message lists them."""
    return ", ".join(NAMES)


def is_format_name(word: str) -> bool:
    """Whether `word` is a format's name to qemu-img (what a qemu-img user types after -f or -O)."""
    return word in FORMATS or word in _REFUSED


def output_format(name: str, compress: bool) -> OutputFormat:
    """The format `-O name` asks for, checked with `-c` before any work.

    Raises:
        UsageError: a format cdisk does not write (the valid ones listed), or `-c` where it cannot compress.
    """
    chosen = FORMATS.get(name)
    if chosen is None:
        raise UsageError(f"-O {name}: {_why_not(name)}; use one of {choices()}")
    if compress and chosen.compressed is None:
        raise UsageError(f"-c: qemu-img cannot compress {name}; drop -c, or write one of the formats it compresses: "
                         f"{', '.join(_COMPRESSIBLE)} (as streamOptimized)")
    return chosen


def _why_not(name: str) -> str:
    if name in _REFUSED:
        return _REFUSED[name]
    if name in _NOT_FORMATS:
        return f"{name} is a qemu protocol or filter, not a disk format"
    import difflib  # only for a refusal: every command's start-up imports this module

    close = difflib.get_close_matches(name.lower(), NAMES, n=1, cutoff=0.6)
    return f"cdisk does not write that format{f' (did you mean {close[0]}?)' if close else ''}"
