"""The only module that runs qemu-img: `json:` specs, info, check, measure, convert with progress."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cdisk.core import processes
from cdisk.core.errors import LimitExceeded, ToolError, UnsafeImageError
from cdisk.core.progress import Progress
from cdisk.core.qemu import sandbox
from cdisk.core.qemu.output_formats import FORMATS
from cdisk.core.target import Measure

SECTOR = 512
# CDI and KubeVirt run `qemu-img info` on untrusted images under these limits: a crafted header
# must not make qemu-img eat the host's memory or CPU. The wall-clock limit catches what the CPU
# limit cannot: a qemu-img that waits (on a FIFO, a lock) instead of working.
INSPECT_ADDRESS_SPACE = 1 << 30
# Under that limit, glibc's per-thread malloc arenas (64 MiB of address space reserved each) made a harmless
# `qemu-img check` abort now and then: its thread pool spawns a varying number of threads, each with an arena,
# and address space peaked anywhere from 170 MiB to over 1 GiB for the same disk. One arena: ~45 MiB, every run,
# and the limit bounds what qemu-img allocates, not how many threads happened to start.
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}
INSPECT_CPU_SECONDS = 30
INSPECT_WALL_SECONDS = 120
# Formats whose every outside reference the header checks refuse, so qemu-img may open them even
# where no sandbox can be made; every other format is read only inside one.
UNCONFINED_FORMATS = frozenset({"raw", "qcow2"})
# Protocol drivers of the nodes cdisk builds itself, on paths it chose.
_PROTOCOLS = frozenset({"file", "host_device"})
_INFO = ("info", "--output=json")
_CHECK = ("check", "--output=json")
# qemu-img convert's most requests in flight (-m).
MAX_COROUTINES = 16
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def file_node(filename: str) -> dict[str, Any]:
    """A protocol node for a plain file."""
    return {"driver": "file", "filename": filename}


def slice_node(filename: str, offset: int, size: int) -> dict[str, Any]:
    """A node for `size` bytes at `offset` in a file, e.g. a member inside a tar.

    qemu's raw driver refuses a size that is not a multiple of 512; tar pads every member to 512
    bytes, so rounding up stays inside the tar and matches the size qemu-img gives a plain file.
    """
    rounded = -(-size // SECTOR) * SECTOR
    return {"driver": "raw", "offset": offset, "size": rounded, "file": file_node(filename)}


def image_spec(fmt: str, node: dict[str, Any]) -> str:
    """A `json:` filename opening `node` with format driver `fmt`.

    The driver is always explicit so qemu-img never probes, and `"backing": null` keeps it from
    opening a backing file even if the header check missed one.
    """
    if fmt == "raw" and node.get("driver") == "raw":
        # The slice is already a raw node: a second raw layer would only cost a copy per request.
        return "json:" + json.dumps({**node, "backing": None})
    return "json:" + json.dumps({"driver": fmt, "backing": None, "file": node})


def parse_progress(chunk: bytes) -> list[float]:
    """Percentages in a piece of `qemu-img -p` output, e.g. b'    (12.50/100%)\\r' -> [12.5]."""
    return [float(m.group(1)) for m in _PROGRESS.finditer(chunk)]


def _limit_inspection() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (INSPECT_ADDRESS_SPACE, INSPECT_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (INSPECT_CPU_SECONDS, INSPECT_CPU_SECONDS))


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)


def spec_view(spec: str) -> sandbox.View:
    """The host files a spec opens (read-only); `/dev/fd/N` is an inherited descriptor and needs none."""
    if not spec.startswith("json:"):
        return sandbox.View(read_only=(spec,))
    files = [str(n["filename"]) for n in _nodes(json.loads(spec[5:])) if "filename" in n]
    return sandbox.View(read_only=tuple(f for f in files if not f.startswith("/dev/fd/")))


def _drivers(specs: Sequence[str]) -> set[str]:
    return {str(n["driver"]) for spec in specs if spec.startswith("json:")
            for n in _nodes(json.loads(spec[5:])) if "driver" in n} - _PROTOCOLS


def _command(args: list[str], specs: Sequence[str], view: sandbox.View, tool: str = "qemu-img",
             package: str = "qemu-utils") -> tuple[Any, list[str]]:
    """`tool` (qemu-img, qemu-storage-daemon) with `args`, confined to `view`; or bare, for raw and qcow2 only, where no
    sandbox can be made.

    Raises:
        UnsafeImageError: no sandbox, and a spec uses a format that could name files outside the image.
    """
    qemu_img = processes.command(tool, package)
    reason = sandbox.unavailable()
    if reason is None:
        program = str(qemu_img.executable)
        # qemu-img outside /usr (a build in /opt, say) must be in the sandbox's view too.
        extra = sandbox.View() if program.startswith("/usr/") else sandbox.View(read_only=(program,))
        full = sandbox.confine([program, *args], view + extra)
        return processes.command(full[0], "bubblewrap"), full[1:]
    risky = _drivers(specs) - UNCONFINED_FORMATS
    if risky:
        raise UnsafeImageError(f"the disk is {'/'.join(sorted(risky))}, which cdisk reads only with {tool} in a "
                               f"sandbox, and {reason}; install bubblewrap (apt-get install bubblewrap) and allow "
                               "user namespaces, or ship the disk as qcow2 or raw")
    return qemu_img, args


def confined(tool: str, package: str, args: list[str], specs: Sequence[str], view: sandbox.View,
             ) -> tuple[Any, list[str]]:
    """Another qemu tool that opens disks (qemu-storage-daemon; installed by `package`) with `args`,
    confined to the specs' files and `view`."""
    whole = view
    for spec in specs:
        whole += spec_view(spec)
    return _command(args, specs, whole, tool, package)


def start_sandbox_probe() -> None:
    """Start finding out, in the background, whether qemu-img can run in a sandbox here."""
    sandbox.start_probe()


def unconfined_reason() -> str | None:
    """None when qemu-img runs in a sandbox here; otherwise why not (only raw and qcow2 are then read)."""
    return sandbox.unavailable()


def _inspect(what: str, args: list[str], spec: str, pass_fds: Sequence[int]) -> tuple[int, str, str, list[str]]:
    """Run an inspecting qemu-img under every limit; a run the limits stop is a refused image.

    Returns its exit code, stdout, the tail of its stderr and the whole argv that ran.
    """
    (ran,) = _inspect_together([(what, args)], spec, pass_fds)
    return _judged(what, ran)


_Ran = tuple[int, str, str, list[str]]


def _inspect_together(asked: Sequence[tuple[str, list[str]]], spec: str, pass_fds: Sequence[int],
                      ) -> list[_Ran | UnsafeImageError]:
    """Inspecting qemu-imgs (`(what, args)` each) run at once, each in its sandbox under every limit.

    Returns each one's exit code, stdout, the tail of its stderr and the whole argv that ran; or, from the one
    the wall clock or the output bound stopped on, the refusal (the ones before it stand, to be judged first:
    `_judged`, in the order the caller judges its answers).
    """
    runs = []
    for _, args in asked:
        cmd, argv = _command(args, [spec], spec_view(spec))
        runs.append((cmd, argv, {"preexec_fn": _limit_inspection, "pass_fds": tuple(pass_fds),
                                 "env": {**os.environ, **ONE_ARENA}}))
    try:
        results = processes.run_together(*runs, timeout=INSPECT_WALL_SECONDS)
    except LimitExceeded as error:
        results = error.finished
        what = asked[len(results)][0]  # the one stopped: each before it had finished
        refusal = UnsafeImageError(f"qemu-img {what} of the disk {error.what} and was stopped; the image is "
                                   "hostile or damaged: rebuild or re-pull it")
        return [*_with_argv(results, runs[:len(results)]), *[refusal] * (len(asked) - len(results))]
    return list(_with_argv(results, runs))


def _with_argv(results: list[tuple[int, str, str]], runs: list[tuple[Any, list[str], dict[str, Any]]],
               ) -> Iterator[_Ran]:
    for (code, out, err), (cmd, argv, _) in zip(results, runs, strict=True):
        yield code, out, err, [str(cmd), *argv]


def _judged(what: str, ran: _Ran | UnsafeImageError) -> _Ran:
    """A run's answer, or its refusal: a limit stopped it (`_inspect_together`, `_refuse_if_stopped`)."""
    if isinstance(ran, UnsafeImageError):
        raise ran
    _refuse_if_stopped(what, ran[0])
    return ran


def _refuse_if_stopped(what: str, code: int) -> None:
    """Refuse the disk when a signal stopped its inspection: a limit shows as SIGKILL/SIGSEGV/SIGABRT (memory) or
    SIGXCPU (CPU), and the signal is named."""
    if processes.killed_by_signal(code):
        signum = -code if code < 0 else code - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        raise UnsafeImageError(f"qemu-img {what} was stopped by its memory or CPU limit "
                               f"({INSPECT_ADDRESS_SPACE >> 20} MiB, {INSPECT_CPU_SECONDS} s: {name}); the image is "
                               "hostile or damaged: rebuild or re-pull it")


def _failure(what: str, argv: Sequence[str], code: int, err: str) -> ToolError:
    """A failed run as a ToolError; `argv` is the whole argv that ran (the sandbox's included)."""
    return ToolError(f"qemu-img {what} failed: {processes.last_line(err, code)}", list(argv), code, err)


@dataclass(frozen=True)
class ImageInfo:
    """What `qemu-img info` says of a disk."""

    format: str
    virtual_size: int
    backing: str | None
    data_file: str | None
    cluster_size: int | None = None


def info(spec: str, pass_fds: Sequence[int] = ()) -> ImageInfo:
    """`qemu-img info` on a spec, under resource limits.

    Raises:
        UnsafeImageError: qemu-img cannot open the disk as its detected format.
    """
    code, out, err, _ = _inspect("info", [*_INFO, spec], spec, pass_fds)
    return _info_of(code, out, err)


@dataclass(frozen=True)
class Clusters:
    """What `qemu-img check` counted, where the format has clusters (qcow2): `allocated` (None where it has none)
    bounds what a conversion writes without a `qemu-img measure` (each holds at most one cluster of the guest's
    data); `compressed` says whether any is compressed (its conversion is CPU-bound: `ConvertOptions`)."""

    allocated: int | None = None
    compressed: bool = False


def check(spec: str, pass_fds: Sequence[int] = ()) -> Clusters:
    """`qemu-img check` under resource limits; leaked clusters are harmless, corruption is refused."""
    code, out, err, _ = _inspect("check", [*_CHECK, spec], spec, pass_fds)
    return _clusters_of(code, out, err)


def info_and_check(spec: str, pass_fds: Sequence[int] = (), judge: Callable[[ImageInfo], None] = lambda _: None,
                   ) -> tuple[ImageInfo, Clusters]:
    """`info` and `check` of one disk at once, each in its own sandbox under every limit (on two cores, the cost of
    one): both only read, and `"backing": null`, the header checks and the sandbox keep either from opening any
    other file. Judged as if run one after the other: info's refusal first, then `judge`'s of info's answer (a
    backing file), then check's.

    Raises:
        UnsafeImageError: as `info`, then as `judge`, then as `check`.
    """
    info_ran, check_ran = _inspect_together([("info", [*_INFO, spec]), ("check", [*_CHECK, spec])], spec, pass_fds)
    icode, iout, ierr, _ = _judged("info", info_ran)
    found = _info_of(icode, iout, ierr)
    judge(found)
    ccode, cout, cerr, _ = _judged("check", check_ran)
    return found, _clusters_of(ccode, cout, cerr)


def _info_of(code: int, out: str, err: str) -> ImageInfo:
    if code != 0:
        raise UnsafeImageError(f"qemu-img cannot read the disk: {processes.last_line(err, code)}; "
                               "the image may be damaged: rebuild or re-pull it")
    try:
        data = json.loads(out)
        specific = data.get("format-specific", {}).get("data", {})
        return ImageInfo(format=data["format"], virtual_size=int(data["virtual-size"]),
                         backing=data.get("backing-filename") or data.get("full-backing-filename"),
                         data_file=specific.get("data-file"),
                         cluster_size=int(data["cluster-size"]) if data.get("cluster-size") else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UnsafeImageError("qemu-img info said something cdisk cannot parse about the disk; rebuild or "
                               "re-pull the image") from None


def _clusters_of(code: int, out: str, err: str) -> Clusters:
    # 0 clean, 3 leaked clusters only, 63 the format has no check: all fine for reading.
    if code in (0, 3, 63):
        try:
            counted = json.loads(out) if code != 63 else {}
            allocated, compressed = counted.get("allocated-clusters"), counted.get("compressed-clusters")
        except (ValueError, AttributeError):
            allocated = compressed = None
        return Clusters(allocated if isinstance(allocated, int) and allocated >= 0 else None,
                        isinstance(compressed, int) and compressed > 0)
    if code == 2:
        raise UnsafeImageError("qemu-img check found the disk corrupted; rebuild or re-pull the image")
    # 1: the check could not be completed — on a disk that qemu-img info opened, the disk's doing.
    raise UnsafeImageError(f"qemu-img could not check the disk: {processes.last_line(err, code)}; the image "
                           "may be damaged: rebuild or re-pull it")


def measure(spec: str, out_format: str, pass_fds: Sequence[int] = (), options: Sequence[str] = ()) -> Measure:
    """`qemu-img measure` of the disk converted to `out_format` with `-o options` (uncompressed: a safe upper bound).

    Only raw, qcow2 and luks can be measured; `output_formats.Layout` bounds the others from a qcow2 measure.
    """
    argv = ["measure", "--output=json", "-O", out_format, *(["-o", ",".join(options)] if options else []), spec]
    code, out, err, ran = _inspect("measure", argv, spec, pass_fds)
    if code != 0:
        raise _failure("measure", ran, code, err)
    try:
        data = json.loads(out)
        return Measure(int(data["required"]), int(data["fully-allocated"]))
    except (ValueError, TypeError, KeyError):
        raise _failure("measure", ran, code, f"unexpected output: {out[:200]!r}") from None


_MISMATCH = re.compile(r"Content mismatch at offset (\d+)")


def map_extents(spec: str, pass_fds: Sequence[int] = ()) -> list[dict[str, Any]]:
    """`qemu-img map --output=json` of a disk under every limit of an inspection: its extents as qemu-img lists
    them (start, length, data, zero, offset in the file where it has one).

    Raises:
        UnsafeImageError: a limit stopped it.
        ToolError: it failed, or its output is not a list.
    """
    code, out, err, ran = _inspect("map", ["map", "--output=json", spec], spec, pass_fds)
    if code != 0:
        raise _failure("map", ran, code, err)
    try:
        entries = json.loads(out)
    except ValueError:
        entries = None
    if not isinstance(entries, list):
        raise ToolError("qemu-img map's output is not a list of extents", ran, code, err)
    return entries


def compare(spec: str, other_spec: str, pass_fds: Sequence[int] = ()) -> int | None:
    """`qemu-img compare` of two specs: None when identical, else the first differing offset.

    Sizes are not compared here (qemu-img treats a longer all-zero tail as equal); callers do that.
    """
    argv = ["compare", spec, other_spec]
    cmd, full = _command(argv, [spec, other_spec], spec_view(spec) + spec_view(other_spec))
    code, out, err = processes.run(cmd, full, pass_fds=tuple(pass_fds))
    if code == 0:
        return None
    if code == 1:
        match = _MISMATCH.search(out)
        return int(match.group(1)) if match else 0
    raise _failure("compare", [str(cmd), *full], code, err)


def create_overlay(path: str, backing_uri: str, size: int) -> None:
    """A new qcow2 at `path` (an existing empty file) backed by the raw NBD export `backing_uri`, of `size`.

    `-u`: the export is not opened (nor a connection taken from the server's --shared clients); its size is known.
    No sandbox: qemu-img writes a header of cdisk's own making and reads nothing of the image.
    """
    argv = ["create", "-q", "-f", "qcow2", "-u", "-b", backing_uri, "-F", "raw", path, str(size)]
    code, _, err = processes.run(processes.command("qemu-img", "qemu-utils"), argv, timeout=INSPECT_WALL_SECONDS)
    if code != 0:
        raise _failure("create", ["qemu-img", *argv], code, err)


@dataclass(frozen=True)
class ConvertOptions:
    """How to write the target; see `convert_argv` for why each flag is chosen."""

    out_format: str
    compressed: bool = False
    existing_target: bool = False
    target_is_zero: bool = False
    compressed_source: bool = False


def convert_argv(spec: str, target: str, options: ConvertOptions) -> list[str]:
    """The qemu-img arguments converting `spec` to `target`.

    Measured on a 2-core machine, warm cache, 4 GiB ext4 disks (scripts/bench, qemu-img 7.2):
    - `-W` (out-of-order writes): 8-13 % faster on compressed qcow2, qcow2 and raw sources alike;
      qemu-img forbids it with `-c`, where compressed clusters must be appended in order; and qed's
      allocation asserts under it (qemu 7.2): qed is written in order.
    - `-m 16` (qemu-img's most) instead of the default 8 coroutines, for a source with compressed clusters: its
      conversion is CPU-bound (each cluster inflated in qemu's thread pool), and more requests in flight keep the
      writes going meanwhile: 0.89x the default's time in the bench's knobs run (4 GiB, 518 MiB compressed
      qcow2), 0.98x in a second A/B; reading alone, equal. For other sources within noise (0.84x to 1.21x): not
      used (each coroutine holds a 2 MiB buffer).
    - `-C` (copy offload): 1.1× to 5× slower here: not used.
    - `-T none` (O_DIRECT source): 1.3× to 4× slower on a warm cache (the knobs run: 1.07× to 4.95×): not used.
    - target cache: qemu-img's default (unsafe: no flushes) is 1.5× to 3× faster than writeback (the knobs run:
      writeback 1.08× to 2.4× the default's time); durability is bought once at the end instead (target.writing
      syncs for refresh).
    - the sandbox (bwrap) costs ~5 ms a run: within the noise of a conversion (the knobs run: 0.93× to 1.16× the
      bare floor's time).
    - `--target-is-zero` with `-n`: only when the operator says a block device reads as zeros
      (a fresh thin LV); qemu-img then skips writing the disk's unallocated areas.
    - `-o`: the options a VM host expects of the format (`output_formats.FORMATS`); none with `-n`, where
      qemu-img creates nothing (a block device: raw, which has none).
    """
    argv = ["convert", "-p", "-O", options.out_format]
    chosen = FORMATS[options.out_format]
    create = chosen.create_options(options.compressed) if not options.existing_target else ()
    if create:
        argv += ["-o", ",".join(create)]
    if options.compressed:
        argv.append("-c")
    elif chosen.out_of_order:
        argv.append("-W")
    if options.compressed_source:
        argv += ["-m", str(MAX_COROUTINES)]
    if options.existing_target:
        # A block device is written in place: qemu-img must not try to create it.
        argv.append("-n")
        if options.target_is_zero:
            argv.append("--target-is-zero")
    argv += [spec, target]
    return argv


def convert(spec: str, target: str, options: ConvertOptions, progress: Progress,
            pass_fds: Sequence[int] = ()) -> None:
    """Run `qemu-img convert`, feeding its `-p` output to `progress`.

    Raises:
        ToolError: qemu-img failed; its last stderr line is in the message.
    """
    argv = convert_argv(spec, target, options)
    cmd, full = _command(argv, [spec], spec_view(spec) + sandbox.View(writable=(target,)))

    def report(chunk: bytes) -> None:
        for percent in parse_progress(chunk):
            progress.update(percent, 100.0)

    with processes.running(cmd, full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           pass_fds=tuple(pass_fds)) as proc:
        err = processes.drain(proc, report).decode(errors="replace")
        code = proc.wait()
    if code != 0:
        raise _failure("convert", [str(cmd), *full], code, err)
