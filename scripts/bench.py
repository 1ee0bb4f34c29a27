"""cdisk's benchmark: every method against the floor (bare qemu-img convert) and the naive way, interleaved.

Builds once, cached under bench-cache/: an ext4 filesystem of >= 4 GiB made by `mkfs.ext4 -d` from
>= 600 MiB of real files (/usr/share, topped up from /usr/lib), stored as compressed qcow2,
uncompressed qcow2 and raw, each in a FROM-scratch containerDisk; and a 256 GiB qcow2 holding 4 MiB.
Then runs, round after round, each command of each case in turn (A B C … A B C …) and prints medians,
ratios to the floor and peak memory.

floor: bare `qemu-img convert -W` of the disk file as podman stores it, copied to the same filesystem.
floor-sparse (raw only): the same of the sparse file the image was built from.
auto+socket: `auto` with a live podman API socket (a host with podman.socket running).
docker-layers, docker-save: the same image built in docker's store (a dockerd of the benchmark's own, overlay2,
its data cached under bench-cache/docker), read from its layer directories or inside `docker save`'s archive.
naive: podman save to a tar, extract it and the layer, convert the extracted file.
X@REV (with --baseline REV): command X of cdisk as it was at git revision REV, for before/after in one run.

Compressed layers (cases raw-gzip, raw-zstd, qcow2-gzip, qcow2-zstd; not run unless named in --cases): the raw
(4 GiB) and qcow2 containerDisks copied by skopeo into OCI layouts with one gzip or zstd layer. Their floor is
the decompressor alone on the same blob (`gzip -dc`/`zstd -dc` to /dev/null); beside it the decompressor
writing the layer to a file (zstd sparse, as it does by default), the decompressor piped into `tar -xO` (the
disk extracted), bare qemu-img convert of the uncompressed disk file, and `cdisk convert oci:LAYOUT`.

File sources read in place (cases layout-raw, layout-qcow2; not run unless named in --cases): the raw and qcow2
containerDisks saved by podman as uncompressed OCI layouts; `cdisk convert oci:LAYOUT` (its layer blob checked
against its digest beside qemu-img's reading) against bare qemu-img of the disk file, and `sha256sum` of the
blob: one read, what the check costs where nothing else reads the blob (a clone, serve's start).

Serving (cases serve-raw, serve-qcow2; not run unless named in --cases): `cdisk serve` of the raw (4 GiB) or
qcow2 containerDisk; its floor is bare `qemu-img convert -W` of the disk file, beside the same command reading
the NBD export instead (`export`), and both reading only (`-read`: to qemu's null device). The goals' yardsticks,
reading only: `stored-read`, bare qemu-img of the file as podman stores it (what cdisk serves; a raw layer's is
fully allocated), and `nbdkit-tar-read`, the peer `nbdkit file LAYER.tar --filter=tar tar-entry=disk/disk.FMT`
(apt-get install nbdkit) on the saved layer, the client decoding the qcow2 itself; `goals` gives export-read's
ratio to each. `export-nbdcopy-read`: nbdcopy to null:, 4 connections (the export allows multi-conn). Each
command meets a server started for it (untimed): the export rows are a new server's first client, a raw
disk's zero scan included.
`first-byte`: from starting `cdisk serve` to the first 512 bytes read from the export by qemu-io (a new server
each round).

Reflink (case reflink-xfs; not run unless named in --cases): an XFS (reflink=1) loop file system under
bench-cache/ (the loop device in direct-io mode) with a podman store of its own, holding raw containerDisks of
1.5 GiB and 20 GiB (the bench file system's data, the rest zeros; fully allocated in the store, as every layer
file is); `cdisk convert --method layers` to a raw file on the same XFS (a clone) against the floor, bare
`qemu-img convert -W` of the store's file to the same place; `cdisk+dig-holes`: the clone, then `fallocate
--dig-holes` on it (what punching the zeros costs); `cdisk oci:` (1.5 GiB): from an OCI layout on the same XFS
whose layer `cdisk build` wrote from the store's file (a tar member cloned). `cold` rows: the store's file
dropped from the page cache before each run (posix_fadvise DONTNEED), so qemu-img reads it from the disk.

Building (cases build-raw, build-qcow2; not run unless named in --cases): `cdisk build` of the raw (4 GiB, 1.4
GiB data) or qcow2 disk into podman's store, against its floor `podman build --no-cache` of a Containerfile
`FROM scratch` / `COPY --chown=107:107 disk /disk/`; beside them `cdisk build --output oci:` with a zstd and a
gzip layer (what a push sends), and the compressors' yardsticks: `pigz -p N -6` and `zstd -T N -3` on every core,
compressing the same layer tar (cdisk's own, uncompressed) to a file; `goals` gives cdisk's ratio to each in wall
and in CPU time (user + system of the whole process tree). Each image is removed after its round, untimed.

Knobs (`--commands knobs` with any of the first cases): the floor with `-m 2`/`-m 4`/`-m 16` coroutines (16 is
qemu-img's most), a writeback target cache (`-t writeback`), an O_DIRECT source (`-T none`), and the floor inside
the sandbox cdisk runs qemu-img in: which qemu-img setting would make the floor itself faster here, and what the
sandbox costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.private_dockerd import private_dockerd  # noqa: E402
from tests.stores import storage_conf  # noqa: E402

CACHE = ROOT / "bench-cache"
CDISK = str(ROOT / ".venv" / "bin" / "cdisk")
FS_SIZE = "4G"
MIN_DATA = 600 << 20
# Every command runs as on an operator's host, where Python keeps the bytecode it compiled (pip compiles it
# at install): a PYTHONDONTWRITEBYTECODE of the shell the benchmark was started from would make every cdisk
# run compile its modules again (~20 ms), a cost no installed cdisk pays. Round 0 writes the bytecode.
RUN_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
CASES = {
    "qcow2-compressed": ("qcow2", ["-c"]),
    "qcow2": ("qcow2", []),
    "raw": ("raw", []),
    "qcow2-256g-sparse": ("qcow2", []),
}


def sh(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def du(path: Path) -> int:
    return int(sh("du", "-sb", path).stdout.split()[0])


def build_filesystem() -> Path:
    fs = CACHE / "fs.raw"
    if fs.exists():
        return fs
    staging = CACHE / "files"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    sh("cp", "-a", "/usr/share", staging / "share")
    if du(staging) < MIN_DATA:
        sh("cp", "-a", "/usr/lib/x86_64-linux-gnu", staging / "lib")
    print(f"bench: {du(staging) >> 20} MiB of real files -> ext4 of {FS_SIZE}", file=sys.stderr)
    sh("mkfs.ext4", "-q", "-F", "-d", staging, fs.with_suffix(".tmp"), FS_SIZE)
    fs.with_suffix(".tmp").rename(fs)
    shutil.rmtree(staging)
    return fs


def build_case(name: str, fs: Path, docker_host: str = "") -> tuple[str, Path]:
    """The case's disk file (the floor reads it) and its containerDisk image (in docker's store too, given a
    docker daemon)."""
    fmt, options = CASES[name]
    case_dir = CACHE / name
    disk = case_dir / f"disk.{fmt}"
    image = f"localhost/cdisk-bench-{name}:latest"
    if not disk.exists():
        case_dir.mkdir(parents=True, exist_ok=True)
        if name == "qcow2-256g-sparse":
            sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "256G")
            sh("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1G 4M", disk)
        else:
            sh("qemu-img", "convert", "-f", "raw", "-O", fmt, *options, fs, disk)
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)
        if docker_host:
            subprocess.run(["docker", "--host", docker_host, "rmi", "-f", image], capture_output=True)
    if subprocess.run(["podman", "image", "exists", image]).returncode != 0:
        (case_dir / "Containerfile").write_text(f"FROM scratch\nCOPY --chown=107:107 disk.{fmt} /disk/\n")
        print(f"bench: building {image}", file=sys.stderr)
        sh("podman", "build", "-q", "-t", image, case_dir)
        (case_dir / f"floor.{fmt}").unlink(missing_ok=True)
    if docker_host and subprocess.run(["docker", "--host", docker_host, "image", "inspect", image],
                                      capture_output=True).returncode != 0:
        print(f"bench: building {image} in docker", file=sys.stderr)
        (case_dir / ".dockerignore").write_text("floor.*\nContainerfile\n")
        sh("docker", "--host", docker_host, "build", "-q", "-t", image, "-f", case_dir / "Containerfile", case_dir,
           env={**os.environ, "DOCKER_BUILDKIT": "0"})
    floor = case_dir / f"floor.{fmt}"
    if not floor.exists():
        # The floor reads the disk file exactly as podman stores it: a layer tar has no holes, so
        # a raw disk lies fully allocated in the store, where the file it was built from was sparse.
        root = sh("podman", "image", "mount", image).stdout.strip()
        try:
            sh("cp", "--sparse=never", f"{root}/disk/disk.{fmt}", floor)
        finally:
            sh("podman", "image", "unmount", image)
    return image, disk


@dataclass
class Sample:
    seconds: float
    self_mib: float  # peak RSS of the process started (cdisk's Python, or qemu-img for the floor)
    tree_mib: float  # peak RSS of the largest process in its tree (qemu-img, podman, …)
    cpu_s: float = 0.0  # user + system time of the process and every child it waited for


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(argv: list[str]) -> Sample:
    """Run argv; its wall time, and peak memory: VmHWM polled (it only grows) and wait4's maximum."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=RUN_ENV)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _hwm(proc.pid))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return Sample(seconds, peak / 1024, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def naive(image: str, fmt: str, work: Path, out: Path) -> list[str]:
    """The way without cdisk: podman save to a tar, extract it and the layer, convert the extracted file."""
    script = f"""set -e
rm -rf {work}; mkdir -p {work}/x {work}/root
podman save -q -o {work}/image.tar {image}
tar -xf {work}/image.tar -C {work}/x
for layer in $(find {work}/x -type f -name '*.tar' -o -type f -path '*blobs*'); do
  tar -xf "$layer" -C {work}/root 2>/dev/null || true
done
qemu-img convert -W -f {fmt} -O raw {work}/root/disk/* {out}
rm -rf {work}"""
    return ["bash", "-c", script]


@contextmanager
def live_socket() -> Iterator[str]:
    """A podman API service, as a host with podman.socket active has: `auto+socket` runs against it."""
    path = CACHE / "api.sock"
    path.unlink(missing_ok=True)
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{path}"])
    while not path.is_socket():
        time.sleep(0.02)
    try:
        yield f"unix://{path}"
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def docker_daemon() -> Iterator[str]:
    """A dockerd of the benchmark's own (its images kept in bench-cache/docker between runs), or "" without
    docker installed."""
    if not shutil.which("dockerd") or not shutil.which("docker"):
        print("bench: no dockerd: the docker rows are left out (apt-get install docker.io)", file=sys.stderr)
        yield ""
        return
    root = CACHE / "docker"
    root.mkdir(exist_ok=True)
    # The test suite's own daemon, its data root cached here: the images built into it stay between runs.
    with private_dockerd(root, os.environ) as host:
        yield host


def baseline_cdisk(rev: str) -> tuple[str, str]:
    """cdisk as of git revision `rev`, installed in a venv of its own under bench-cache/: (label, executable)."""
    commit = sh("git", "-C", ROOT, "rev-parse", "--short", rev).stdout.strip()
    tree = CACHE / f"baseline-{commit}"
    if not (tree / ".venv" / "bin" / "cdisk").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        sh(sys.executable, "-m", "venv", tree / ".venv")
        # Editable, as scripts/setup installs the tree under test: the two then pay the same import costs.
        sh(tree / ".venv" / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", tree)
    return commit, str(tree / ".venv" / "bin" / "cdisk")


def run_case(name: str, fs: Path, rounds: int, socket: str, only: set[str],
             baseline: tuple[str, str] | None = None, docker_host: str = "") -> dict[str, object]:
    image, disk = build_case(name, fs, docker_host)
    fmt = CASES[name][0]
    out = CACHE / "out"
    out.mkdir(exist_ok=True)
    target = out / f"{name}.raw"
    floor = disk.with_name(f"floor.{fmt}")
    commands = {
        "floor": ["qemu-img", "convert", "-W", "-f", fmt, "-O", "raw", str(floor), str(target)],
        "auto": [CDISK, "convert", "-q", "--force", image, str(target)],
        "auto+socket": ["env", f"CONTAINER_HOST={socket}", CDISK, "convert", "-q", "--force", image, str(target)],
        "mount": [CDISK, "convert", "-q", "--force", "--method", "mount", image, str(target)],
        "layers": [CDISK, "convert", "-q", "--force", "--method", "layers", image, str(target)],
        "save": [CDISK, "convert", "-q", "--force", "--method", "save", image, str(target)],
        "naive": naive(image, fmt, out / "naive", target),
    }
    if docker_host:
        for method in ("layers", "save"):
            commands[f"docker-{method}"] = ["env", f"DOCKER_HOST={docker_host}", CDISK, "convert", "-q", "--force",
                                            "--engine", "docker", "--method", method, image, str(target)]
    if baseline:
        label, old = baseline
        for key in ("auto", "mount", "save"):
            commands[f"{key}@{label}"] = [old if part == CDISK else part for part in commands[key]]
    if fmt == "raw":
        commands["floor-sparse"] = ["qemu-img", "convert", "-W", "-f", fmt, "-O", "raw", str(disk), str(target)]
    commands = {k: v for k, v in commands.items() if k == "floor" or not only or k.split("@")[0] in only}
    if "knobs" in only:
        commands.update(knobs(commands["floor"], floor, target))
    return _interleaved(commands, rounds, target)


def knobs(floor: list[str], source: Path, target: Path) -> dict[str, list[str]]:
    """The floor with each qemu-img knob a host might turn (`--commands knobs`): more or fewer coroutines, the
    target's cache through the kernel (writeback) instead of qemu-img's default (unsafe: no flushes), the
    source's cache bypassed (O_DIRECT), and the floor inside the sandbox cdisk runs qemu-img in (what the
    sandbox itself costs)."""
    from cdisk.core.qemu import sandbox

    def with_(*extra: str) -> list[str]:
        return [*floor[:2], *extra, *floor[2:]]

    program = shutil.which("qemu-img") or "qemu-img"
    confined = sandbox.confine([program, *floor[1:]],
                               sandbox.View(read_only=(str(source),), writable=(str(target.parent),)))
    return {"floor-m4": with_("-m", "4"), "floor-m16": with_("-m", "16"), "floor-m2": with_("-m", "2"),
            "floor-writeback": with_("-t", "writeback"), "floor-src-direct": with_("-T", "none"),
            "floor-sandboxed": confined}


COMPRESSED_CASES = {"raw-gzip": ("raw", "gzip"), "raw-zstd": ("raw", "zstd"),
                    "qcow2-gzip": ("qcow2", "gzip"), "qcow2-zstd": ("qcow2", "zstd")}


def build_compressed(name: str, fs: Path) -> tuple[Path, Path, Path]:
    """The case's OCI layout (one compressed layer), its layer blob, and the uncompressed disk file."""
    fmt, compression = COMPRESSED_CASES[name]
    image, disk = build_case(fmt, fs)
    case_dir = CACHE / "compressed"
    case_dir.mkdir(exist_ok=True)
    layout = case_dir / name
    if not layout.exists():
        print(f"bench: writing {image} as one {compression} layer", file=sys.stderr)
        sh("skopeo", "copy", "-q", "--dest-compress-format", compression, f"containers-storage:{image}",
           f"oci:{layout.with_suffix('.tmp')}:latest")
        layout.with_suffix(".tmp").rename(layout)
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda path: path.stat().st_size)
    return layout, blob, disk


def run_compressed(name: str, fs: Path, rounds: int) -> dict[str, object]:
    layout, blob, disk = build_compressed(name, fs)
    fmt, tool = COMPRESSED_CASES[name]
    target = CACHE / "out" / f"{name}.raw"
    target.parent.mkdir(exist_ok=True)
    to_file = (f"zstd -q -d -f {blob} -o {target}" if tool == "zstd" else f"gzip -dc < {blob} > {target}")
    commands = {
        "floor": ["sh", "-c", f"{tool} -dc < {blob} > /dev/null"],
        f"{tool}-to-file": ["sh", "-c", to_file],
        f"{tool}|tar-xO": ["sh", "-c", f"{tool} -dc < {blob} | tar -xO > {target}"],
        "qemu-img": ["qemu-img", "convert", "-W", "-f", fmt, "-O", "raw", str(disk), str(target)],
        "cdisk": [CDISK, "convert", "-q", "--force", f"oci:{layout}", str(target)],
    }
    return _interleaved(commands, rounds, target)


LAYOUT_CASES = {"layout-raw": "raw", "layout-qcow2": "qcow2"}


def saved_layout(fmt: str, fs: Path) -> tuple[Path, Path]:
    """The case's containerDisk saved by podman as an uncompressed OCI layout (made once), and its layer blob: the
    disk inside a plain tar."""
    image, _ = build_case(fmt, fs)
    layout = CACHE / "layouts" / f"layout-{fmt}"
    if not layout.exists():
        layout.parent.mkdir(exist_ok=True)
        print(f"bench: saving {image} as an uncompressed OCI layout", file=sys.stderr)
        sh("podman", "save", "-q", "--uncompressed", "--format", "oci-dir", "-o", layout.with_suffix(".tmp"), image)
        layout.with_suffix(".tmp").rename(layout)
    return layout, max((layout / "blobs" / "sha256").iterdir(), key=lambda path: path.stat().st_size)


def run_layout(name: str, fs: Path, rounds: int, baseline: tuple[str, str] | None) -> dict[str, object]:
    """A file source whose layer qemu-img reads in place (`podman save --uncompressed --format oci-dir` of the
    case's containerDisk): cdisk against bare qemu-img of the disk file, beside `sha256sum` of the layer blob (what
    checking it against its digest costs where nothing else reads it: the clone rows, serve's start)."""
    fmt = LAYOUT_CASES[name]
    _, disk = build_case(fmt, fs)
    layout, blob = saved_layout(fmt, fs)
    target = CACHE / "out" / f"{name}.raw"
    target.parent.mkdir(exist_ok=True)
    floor = disk.with_name(f"floor.{fmt}")
    commands = {
        "floor": ["qemu-img", "convert", "-W", "-f", fmt, "-O", "raw", str(floor), str(target)],
        "cdisk oci:": [CDISK, "convert", "-q", "--force", f"oci:{layout}", str(target)],
        "sha256sum layer": ["sha256sum", str(blob)],
    }
    if baseline:
        label, old = baseline
        commands[f"cdisk oci:@{label}"] = [old, *commands["cdisk oci:"][1:]]
    return _interleaved(commands, rounds, target)


LS_CASES = {"ls-raw": "raw", "ls-qcow2": "qcow2"}


def run_ls(name: str, fs: Path, rounds: int, baseline: tuple[str, str] | None) -> dict[str, object]:
    """`cdisk ls` of the case's containerDisk, read in place, against the floor an operator has without it
    (`podman image mount`, `find` of the big files, unmount) and against `--method save` (what ls did before it
    read in place: a copy of every layer)."""
    image, _ = build_case(LS_CASES[name], fs)
    commands = {
        "floor": ["bash", "-c", f'root=$(podman image mount {image}); find "$root" -type f -size +1M; '
                                f"podman image unmount {image} >/dev/null"],
        "cdisk ls": [CDISK, "ls", image],
        "cdisk ls --method save": [CDISK, "ls", "--method", "save", image],
    }
    if baseline:
        label, old = baseline
        commands[f"cdisk ls@{label}"] = [old, *commands["cdisk ls"][1:]]
    return _interleaved(commands, rounds, None)


SERVE_CASES = {"serve-raw": "raw", "serve-qcow2": "qcow2"}


def _start_serve(image: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """`cdisk serve --json --shared 8 EXTRA IMAGE` started, and its URI once it serves."""
    proc = subprocess.Popen([CDISK, "serve", "--json", "--shared", "8", *extra, image], stdout=subprocess.PIPE,
                            env=RUN_ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"bench: cdisk serve {image} ended before it served (exit {proc.wait()})")
    return proc, json.loads(line)["uri"]


def _stop_serve(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def served(image: str) -> Iterator[tuple[str, Sample]]:
    """`cdisk serve` of `image` while the block runs: its URI, and the time until a client read the first bytes."""
    start = time.perf_counter()
    proc, uri = _start_serve(image)
    try:
        sh("qemu-io", "-r", "-f", "raw", "-c", "read 0 512", uri)
        yield uri, Sample(time.perf_counter() - start, _hwm(proc.pid) / 1024, 0.0)
    finally:
        _stop_serve(proc)


@contextmanager
def fresh_server(image: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """`cdisk serve` of `image` on one socket, and a callable that starts it anew (untimed, before each command):
    every export row is then a new server's first client, whatever the server learns once per serve (a raw
    disk's zeros) paid within the row."""
    sock = str(CACHE / "out" / "serve.sock")
    running: list[subprocess.Popen[bytes]] = []
    uri: list[str] = []

    def restart() -> None:
        while running:
            _stop_serve(running.pop())
        proc, address = _start_serve(image, "--socket", sock)
        running.append(proc)
        uri[:] = [address]

    try:
        restart()
        yield uri[0], restart
    finally:
        while running:
            _stop_serve(running.pop())


def stored_file(image: str, member: str) -> Path:
    """`member` of `image`'s one layer as podman stores it (the file cdisk serves and reads in place)."""
    data = json.loads(sh("podman", "image", "inspect", image).stdout)[0]["GraphDriver"]["Data"]
    return Path(data["UpperDir"]) / member


@contextmanager
def nbdkit_tar(blob: Path, member: str) -> Iterator[str]:
    """The peer the issue names (the seed's approach C): `nbdkit file LAYER.tar --filter=tar tar-entry=MEMBER`,
    bare, on a socket of its own, while the block runs; its URI. The export is the member as stored: the client
    decodes a qcow2 itself."""
    sock = CACHE / "out" / "nbdkit.sock"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(["nbdkit", "-f", "-r", "-U", str(sock), "file", str(blob), "--filter=tar",
                             f"tar-entry={member}"], env=RUN_ENV)
    try:
        uri = f"nbd+unix:///?socket={sock}"
        deadline = time.monotonic() + 10
        while subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: nbdkit did not serve {blob} (apt-get install nbdkit)")
            time.sleep(0.05)
        yield uri
    finally:
        proc.terminate()
        proc.wait()


def run_serve(name: str, fs: Path, rounds: int) -> dict[str, object]:
    fmt = SERVE_CASES[name]
    image, disk = build_case(fmt, fs)
    _, blob = saved_layout(fmt, fs)
    member = f"disk/disk.{fmt}"
    stored = str(stored_file(image, member))
    target = CACHE / "out" / f"{name}.raw"
    target.parent.mkdir(exist_ok=True)
    first: list[Sample] = []
    for round_ in range(rounds + 1):
        with served(image) as (_, sample):
            if round_:
                first.append(sample)
    with fresh_server(image) as (uri, restart), nbdkit_tar(blob, member) as peer:
        floor = str(disk.with_name(f"floor.{fmt}"))
        size = json.loads(sh("qemu-img", "info", "--output=json", "-f", fmt, floor).stdout)["virtual-size"]
        null = ["--target-image-opts", f"driver=null-co,size={size}"]
        rows = _interleaved({
            "floor": ["qemu-img", "convert", "-W", "-f", fmt, "-O", "raw", floor, str(target)],
            "export": ["qemu-img", "convert", "-W", "-f", "raw", "-O", "raw", uri, str(target)],
            # Reading alone (to qemu's null device): what the NBD hop costs, without the writes' noise.
            "floor-read": ["qemu-img", "convert", "-W", "-n", "-f", fmt, floor, *null],
            "export-read": ["qemu-img", "convert", "-W", "-n", "-f", "raw", uri, *null],
            # The goals' two yardsticks: the file as podman stores it (a raw layer's is fully allocated), read by
            # bare qemu-img; and the nbdkit tar filter serving the saved layer's member, decoded by the client.
            "stored-read": ["qemu-img", "convert", "-W", "-n", "-f", fmt, stored, *null],
            "nbdkit-tar-read": ["qemu-img", "convert", "-W", "-n", "-f", fmt, peer, *null],
            # A client that opens several connections where the server allows it (NBD multi-conn): nbdcopy's 4.
            "export-nbdcopy-read": ["nbdcopy", uri, "null:"],
        }, rounds, target, restart)
    rows["first-byte"] = {"median_s": round(statistics.median(s.seconds for s in first), 3), "ratio": None,
                          "self_peak_mib": round(max(s.self_mib for s in first), 1), "tree_peak_mib": None,
                          "samples_s": [round(s.seconds, 3) for s in first]}
    export = rows["export-read"]["median_s"]  # type: ignore[index]
    rows["goals"] = {"export-read/stored-read": round(export / rows["stored-read"]["median_s"], 2),  # type: ignore[index]
                     "export-read/nbdkit-tar-read": round(export / rows["nbdkit-tar-read"]["median_s"], 2)}  # type: ignore[index]
    return rows


REFLINK_SIZES = {"1.5G": 3 << 29, "20G": 20 << 30}


@contextmanager
def xfs_store() -> Iterator[tuple[Path, dict[str, str]]]:
    """The XFS loop file system (made once, kept in bench-cache/) mounted, and the env of its podman store. The
    loop device reads its backing file directly (--direct-io): a file dropped from XFS's page cache is then read
    from the disk, not from the host's cache of the backing file."""
    backing, root = CACHE / "xfs.img", CACHE / "xfs"
    root.mkdir(exist_ok=True)
    if not backing.exists():
        with open(backing, "wb") as f:
            f.truncate(48 << 30)
        sh("mkfs.xfs", "-q", "-m", "reflink=1", backing)
    device = sh("losetup", "--find", "--show", "--direct-io=on", backing).stdout.strip()
    try:
        sh("mount", device, root)
        try:
            conf = storage_conf(root / "storage.conf", root)
            yield root, {**RUN_ENV, "CONTAINERS_STORAGE_CONF": str(conf)}
        finally:
            sh("umount", root)
    finally:
        sh("losetup", "-d", device)


def _evicted(path: Path) -> Callable[[], None]:
    """Drop `path` from the page cache (its pages are clean): the next read comes from the disk."""
    def evict() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return evict


def run_reflink(fs: Path, rounds: int) -> dict[str, object]:
    rows: dict[str, object] = {}
    with xfs_store() as (root, env):
        for label, size in REFLINK_SIZES.items():
            image = f"localhost/cdisk-bench-reflink:{label.lower()}"
            layout = root / f"layout-{label}"
            if subprocess.run(["podman", "image", "exists", image], env=env).returncode != 0:
                disk = root / f"disk-{label}.raw"
                sh("cp", "--sparse=always", fs, disk)
                os.truncate(disk, size)
                print(f"bench: building {image} on XFS", file=sys.stderr)
                subprocess.run([CDISK, "build", "-q", "--layer-compression", "none", "--tmpdir", str(root), str(disk),
                                image], env=env, check=True)
                disk.unlink()
            upper = json.loads(sh("podman", "image", "inspect", image, env=env).stdout)[0]["GraphDriver"]["Data"]
            stored = Path(upper["UpperDir"]) / "disk" / "disk.img"
            if size < 4 << 30 and not layout.exists():  # the store's (fully allocated) file, as a layer of a layout
                subprocess.run([CDISK, "build", "-q", "--layer-compression", "none", "--output", f"oci:{layout}",
                                str(stored), image], env=env, check=True)
            target = root / "out.raw"
            cdisk = ["env", f"CONTAINERS_STORAGE_CONF={env['CONTAINERS_STORAGE_CONF']}", CDISK, "convert", "-q",
                     "--force"]
            commands = {"floor": ["qemu-img", "convert", "-W", "-f", "raw", "-O", "raw", str(stored), str(target)],
                        "cdisk": [*cdisk, "--method", "layers", image, str(target)],
                        "cdisk+dig-holes": ["sh", "-c", '"$@" && fallocate --dig-holes "$0"', str(target), *cdisk,
                                            "--method", "layers", image, str(target)]}
            if layout.exists():
                commands["cdisk oci:"] = [*cdisk, f"oci:{layout}", str(target)]
            for key, row in _interleaved(commands, rounds, target).items():
                rows[f"{label} {key}"] = row
            cold = {key: commands[key] for key in ("floor", "cdisk")}
            for key, row in _interleaved(cold, rounds, target, _evicted(stored)).items():
                rows[f"{label} cold {key}"] = row
    return rows


BUILD_CASES = {"build-raw": "raw", "build-qcow2": "qcow2"}


def run_build(name: str, fs: Path, rounds: int) -> dict[str, object]:
    fmt = BUILD_CASES[name]
    _, disk = build_case(fmt, fs)
    context = CACHE / "build" / fmt
    context.mkdir(parents=True, exist_ok=True)
    source = context / f"disk.{fmt}"
    if not source.exists():
        os.link(disk, source)
    (context / "Containerfile").write_text(f"FROM scratch\nCOPY --chown=107:107 disk.{fmt} /disk/\n")
    tag = f"localhost/cdisk-bench-{name}"
    layout = CACHE / "out" / f"{name}-layout"
    layout.parent.mkdir(exist_ok=True)
    commands = {
        "floor": ["podman", "build", "-q", "--no-cache", "-t", f"{tag}:podman", str(context)],
        "cdisk": [CDISK, "build", "-q", str(source), f"{tag}:cdisk"],
        "cdisk-oci-zstd": [CDISK, "build", "-q", "--layer-compression", "zstd", "--output", f"oci:{layout}",
                           str(source), f"{tag}:oci"],
        "cdisk-oci-gzip": [CDISK, "build", "-q", "--output", f"oci:{layout}", str(source), f"{tag}:oci"],
    }
    # The compressors' own yardsticks, on every core: pigz and zstd compressing the same layer tar (cdisk's own,
    # uncompressed, made once untimed) at the levels cdisk uses (gzip 6, zstd 3), to a file.
    plain = CACHE / "out" / f"{name}-plain"
    if not (plain / "index.json").exists():
        shutil.rmtree(plain, ignore_errors=True)
        sh(CDISK, "build", "-q", "--layer-compression", "none", "--output", f"oci:{plain}", source, f"{tag}:plain")
    layer = max((plain / "blobs" / "sha256").iterdir(), key=lambda blob: blob.stat().st_size)
    squeezed = CACHE / "out" / f"{name}-layer.compressed"
    cores = str(os.cpu_count() or 1)
    commands["pigz"] = ["sh", "-c", 'pigz -p "$1" -6 < "$2" > "$3"', "pigz", cores, str(layer), str(squeezed)]
    commands["zstd"] = ["sh", "-c", 'zstd -q -T"$1" -3 < "$2" > "$3"', "zstd", cores, str(layer), str(squeezed)]

    def clean() -> None:
        subprocess.run(["podman", "rmi", "-f", f"{tag}:podman", f"{tag}:cdisk"], capture_output=True)
        shutil.rmtree(layout, ignore_errors=True)
        squeezed.unlink(missing_ok=True)

    rows = _interleaved(commands, rounds, None, clean)
    rows["goals"] = {f"{mine}/{peer}{what}": round(rows[mine][key] / rows[peer][key], 2)  # type: ignore[index]
                     for mine, peer in (("cdisk-oci-gzip", "pigz"), ("cdisk-oci-zstd", "zstd"))
                     for what, key in (("", "median_s"), (" cpu", "cpu_median_s"))}
    return rows


def _interleaved(commands: dict[str, list[str]], rounds: int, target: Path | None,
                 before: Callable[[], None] = lambda: None) -> dict[str, object]:
    """Each command in turn, round after round (round 0 warms the page cache), medians and ratios to "floor".
    Untimed before each command and once at the end: `target` removed, `before` run (its own clean-up)."""
    def clean() -> None:
        if target is not None:
            target.unlink(missing_ok=True)
        before()

    samples: dict[str, list[Sample]] = {k: [] for k in commands}
    for round_ in range(rounds + 1):
        for key, argv in commands.items():
            clean()
            # Untimed: the previous command's dirty pages must not be written back during this one.
            subprocess.run(["sync"], check=True)
            sample = timed(argv)
            if round_:
                samples[key].append(sample)
    clean()
    floor = statistics.median(s.seconds for s in samples["floor"])
    rows = {}
    for key, got in samples.items():
        median = statistics.median(s.seconds for s in got)
        rows[key] = {"median_s": round(median, 3), "ratio": round(median / floor, 2),
                     "self_peak_mib": round(max(s.self_mib for s in got), 1),
                     "tree_peak_mib": round(max(s.tree_mib for s in got), 1),
                     "cpu_median_s": round(statistics.median(s.cpu_s for s in got), 3),
                     "samples_s": [round(s.seconds, 3) for s in got]}
    return rows


def startup(rounds: int, image: str) -> dict[str, object]:
    """`cdisk --version` (the fixed cost of every run) against a no-op `cdisk refresh`, interleaved."""
    target = CACHE / "out" / "noop.raw"
    target.parent.mkdir(exist_ok=True)
    sh(CDISK, "refresh", "-q", "--pull", "never", image, target)
    commands = {"version": [CDISK, "--version"],
                "noop_refresh": [CDISK, "refresh", "-q", "--pull", "never", image, str(target)]}
    got: dict[str, list[Sample]] = {k: [] for k in commands}
    for round_ in range(rounds * 3 + 1):
        for key, argv in commands.items():
            sample = timed(argv)
            if round_:
                got[key].append(sample)
    out = {key: {"median_s": round(statistics.median(s.seconds for s in samples), 3),
                 "self_peak_mib": round(max(s.self_mib for s in samples), 1)} for key, samples in got.items()}
    out["noop_ratio"] = round(out["noop_refresh"]["median_s"] / out["version"]["median_s"], 2)  # type: ignore[assignment]
    return out  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--commands", default="", help="only these commands (and the floor), e.g. auto,mount")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", metavar="REV", help="also run cdisk as of git revision REV (before/after)")
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    baseline = baseline_cdisk(args.baseline) if args.baseline else None
    fs = build_filesystem()
    machine = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
               "qemu_img": sh("qemu-img", "--version").stdout.splitlines()[0],
               "podman": sh("podman", "--version").stdout.strip(),
               "storage": sh("podman", "info", "--format", "{{.Store.GraphDriverName}}").stdout.strip(),
               "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
               # What a socket's send buffer may be: the serve rows depend on it (docs/decisions.md, Serving).
               "wmem_max": int(Path("/proc/sys/net/core/wmem_max").read_text())}
    small, _ = build_case("qcow2-256g-sparse", fs)
    results: dict[str, object] = {"machine": machine, "rounds": args.rounds,
                                  "startup": startup(args.rounds, small), "cases": {}}
    only = set(filter(None, args.commands.split(",")))
    wants_docker = (not only or any(command.startswith("docker-") for command in only)) and any(
        name in CASES for name in args.cases.split(","))
    with live_socket() as socket, (docker_daemon() if wants_docker else nullcontext("")) as docker_host:
        if docker_host:
            machine["docker"] = sh("docker", "--host", docker_host, "version", "--format",
                                   "{{.Server.Version}}").stdout.strip()
        for name in args.cases.split(","):
            print(f"bench: {name} ({args.rounds} rounds)", file=sys.stderr)
            if name in COMPRESSED_CASES:
                results["cases"][name] = run_compressed(name, fs, args.rounds)  # type: ignore[index]
                continue
            if name in SERVE_CASES:
                results["cases"][name] = run_serve(name, fs, args.rounds)  # type: ignore[index]
                continue
            if name in LAYOUT_CASES:
                results["cases"][name] = run_layout(name, fs, args.rounds, baseline)  # type: ignore[index]
                continue
            if name in LS_CASES:
                results["cases"][name] = run_ls(name, fs, args.rounds, baseline)  # type: ignore[index]
                continue
            if name == "reflink-xfs":
                results["cases"][name] = run_reflink(fs, args.rounds)  # type: ignore[index]
                continue
            if name in BUILD_CASES:
                results["cases"][name] = run_build(name, fs, args.rounds)  # type: ignore[index]
                continue
            results["cases"][name] = run_case(name, fs, args.rounds, socket, only, baseline,  # type: ignore[index]
                                              docker_host)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def render(results: dict) -> str:  # type: ignore[type-arg]
    m, startup = results["machine"], results["startup"]
    lines = [f"machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel {m['kernel']}, {m['qemu_img']}, "
             f"{m['podman']} ({m['storage']}), net.core.wmem_max {m.get('wmem_max', '?')}; medians of "
             f"{results['rounds']} interleaved rounds, warm cache",
             f"cdisk --version: {startup['version']['median_s']:.3f} s; no-op `cdisk refresh --pull never`: "
             f"{startup['noop_refresh']['median_s']:.3f} s ({startup['noop_ratio']:.2f}× --version, "
             f"{startup['noop_refresh']['self_peak_mib']} MiB)", "",
             "| case | command | median s | × floor | cdisk/qemu-img peak MiB | tree peak MiB |",
             "|---|---|---:|---:|---:|---:|"]
    goals = []
    for case, rows in results["cases"].items():
        for command, row in rows.items():
            if command == "goals":
                goals.append(f"{case}: " + ", ".join(f"{k} {v:.2f}×" for k, v in row.items()))
                continue
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            tree = "-" if row["tree_peak_mib"] is None else f"{row['tree_peak_mib']:.1f}"
            lines.append(f"| {case} | {command} | {row['median_s']:.3f} | {ratio} | {row['self_peak_mib']:.1f} | "
                         f"{tree} |")
    return "\n".join(lines + (["", *goals] if goals else []))


if __name__ == "__main__":
    main()
