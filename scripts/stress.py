"""Removal under load (issue 23, item 3): cdisk convert and refresh against a loop that removes and reloads
their images, on podman and docker at once.

Three small images per engine share one base layer: `base` (the base alone: /disk/disk.qcow2), `white` (a layer
over it that whites out the base's disk and adds /disk/disk.raw, a raw disk with data at several offsets) and
`replace` (a layer over it with another /disk/disk.qcow2). A walk that sees a half-removed upper layer sees the
base's disk instead: the one failure that matters, a wrong disk. Each image is also a docker-archive on disk, so
that a removed image is loaded again.

While `--concurrency` workers run `--runs` cdisk runs per engine one after another (convert to a TARGET of
its own, or refresh of a TARGET several runs share; every method the engine has; raw or qcow2), one thread per
engine removes and reloads: `rmi -f IMAGE` + `load`, and `image prune -a -f` + `load` of all three. Every run
must either write a disk identical to its image's (`qemu-img compare` with the disk file the image was made
from) or fail with exactly one line on stderr and a documented exit code (2-9, cdisk(1) EXIT STATUS), leaving
nothing at TARGET (convert) or TARGET as it was (refresh). Afterwards nothing may be left: no mount under the
stores, no cdisk temp name beside the targets or in the runs' TMPDIR, no process the runs started.

Never the host's images: podman runs on a private store (CONTAINERS_STORAGE_CONF, graphroot and runroot in a
temp dir), docker on a dockerd of the script's own started as the test suite starts its own, or on the
daemon `--docker-host` names, which must hold no image at the start (the loop prunes every image of it).

Exit status: 0 when every run wrote the right disk or failed as documented and nothing was left; 1 on a wrong
disk, a failure that is not one documented line, a failed convert that left a disk at TARGET, or a leftover; 2
when the stress could not start (a tool missing, a docker daemon that holds images).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.images import Entry, docker_archive, layer_tar, make_disk  # noqa: E402
from tests.mounts import mounts_under  # noqa: E402
from tests.private_dockerd import private_dockerd  # noqa: E402
from tests.stores import storage_conf  # noqa: E402

# Every process the stress starts carries this variable: the leftover check looks for those alone.
TAG_VARIABLE = "CDISK_STRESS_TAG"
METHODS = {"podman": ("auto", "layers", "mount", "save"), "docker": ("auto", "layers", "save")}
FORMATS = ("raw", "qcow2")
UPPER_FILES = 1000
RUN_TIMEOUT = 600  # seconds one cdisk run may take, however loaded the machine
# cdisk(1) EXIT STATUS: a run that fails must fail with one of these (1 is an internal error: a bug).
DOCUMENTED = range(2, 10)
# What a run writes while it works (cdisk(1) FILES): none may be left once every run has ended.
TEMP_NAME = re.compile(r"cdisk-(part|save|podman|build)")


@dataclass(frozen=True)
class StressImage:
    """One image of the stress: its name in both stores, its archive and the disk file it holds."""

    key: str
    ref: str
    archive: Path
    disk: Path
    fmt: str


@dataclass(frozen=True)
class PlannedRun:
    """One cdisk run of the stress."""

    engine: str
    command: str  # convert or refresh
    argv: list[str]
    target: Path
    image: StressImage
    fmt: str
    touch: bool  # refresh: change TARGET's mtime first, so that it converts again


@dataclass
class Failure:
    """A run that went wrong, with what reproduces it."""

    kind: str  # wrong-disk, bad-failure, left-target
    argv: list[str]
    code: int
    stderr: str
    detail: str = ""


@dataclass
class EngineTally:
    runs: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # exit code -> runs
    messages: dict[str, int] = field(default_factory=dict)  # "code: message, names masked" -> runs
    wrong_disks: int = 0
    bad_failures: int = 0  # not one line, not a documented exit code, or "unexpected"
    left_targets: int = 0  # a convert that failed, yet left a disk at TARGET
    removals: dict[str, int] = field(default_factory=dict)  # loop operation -> times (and "-failed")


class Stress:
    """The stores, images, workers and removal loops of one stress run."""

    def __init__(self, work: Path, engines: list[str], docker_host: str, seed: int, cdisk: list[str]) -> None:
        self.work = work
        self.cdisk = cdisk
        self.engines = engines
        self.docker_host = docker_host
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.tally = {engine: EngineTally() for engine in engines}
        self.failures: list[Failure] = []
        self.targets = work / "targets"
        self.tmp = work / "tmp"
        self.store = work / "store"
        self.images: list[StressImage] = []
        self.stop = threading.Event()
        self.tag = uuid.uuid4().hex
        self.env = {name: value for name, value in os.environ.items()
                    if name not in ("CONTAINER_HOST", "CONTAINER_CONNECTION", "DOCKER_CONTEXT")}
        conf = work / "storage.conf"
        self.env.update({TAG_VARIABLE: self.tag, "CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(self.tmp),
                         "DOCKER_HOST": docker_host})

    # --- setting up ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        for directory in (self.targets, self.tmp, self.store / "graph", self.store / "run"):
            directory.mkdir(parents=True)
        self.tmp.chmod(0o1777)
        storage_conf(self.work / "storage.conf", self.store)
        disks = self.work / "disks"
        disks.mkdir()
        base = make_disk(disks / "base.qcow2", "qcow2", "64M", 0x11)
        white = make_disk(disks / "white.raw", "raw", "32M", 0x22)
        self.run_tool("qemu-io", "-f", "raw", "-c", "write -P 0x23 31M 64k", white)
        replace = make_disk(disks / "replace.qcow2", "qcow2", "64M", 0x33)
        lower = layer_tar([Entry("disk/", directory=True), Entry("disk/disk.qcow2", base.read_bytes())])
        # Thousands of small files beside the disk in each upper layer, as an image with a userland has: the
        # engine's removal of the layer's directory then takes a while, and a walk can meet it half done.
        files = [Entry("usr/", directory=True), Entry("usr/share/", directory=True),
                 Entry("usr/share/doc/", directory=True),
                 *(Entry(f"usr/share/doc/f{n:04}", b"%d\n" % n) for n in range(UPPER_FILES))]
        layers = {
            "base": [lower],
            "white": [lower, layer_tar([Entry("disk/", directory=True), Entry("disk/.wh.disk.qcow2", b""),
                                        Entry("disk/disk.raw", white.read_bytes()), *files])],
            "replace": [lower, layer_tar([Entry("disk/", directory=True),
                                          Entry("disk/disk.qcow2", replace.read_bytes()), *files])],
        }
        disk_of = {"base": (base, "qcow2"), "white": (white, "raw"), "replace": (replace, "qcow2")}
        for key, tars in layers.items():
            ref = f"localhost/cdisk-stress/{key}:latest"
            archive = docker_archive(self.work, tars, ref)
            self.images.append(StressImage(key, ref, archive, *disk_of[key]))
        for engine in self.engines:
            held = self.run_tool(engine, "image", "ls", "-a", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
            if engine == "docker" and held.stdout.strip():
                cannot_start(f"stress: the docker daemon at {self.docker_host} holds images "
                             f"({', '.join(held.stdout.splitlines()[:5])}), and the stress prunes every image of "
                             "it; give it an empty daemon (or none: it starts its own)")
            for image in self.images:
                self.run_tool(engine, "load", "-q", "-i", image.archive)

    def run_tool(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=self.env, check=check,
                              stdin=subprocess.DEVNULL)

    # --- the removal loop ------------------------------------------------------------------------------

    def removal_loop(self, engine: str) -> None:
        """Until the runs end: remove one image (or prune them all), wait a moment, load it (them) again."""
        rng = random.Random(self.random.random())
        # The images with an upper layer are removed most: a walk that sees one half-removed sees the base's disk.
        weights = [1 if image.key == "base" else 2 for image in self.images]
        while not self.stop.is_set():
            if rng.random() < 0.2:
                self._loop_step(engine, "prune", "image", "prune", "-a", "-f")
                removed = self.images
            else:
                removed = rng.choices(self.images, weights)
                self._loop_step(engine, "rmi", "rmi", "-f", removed[0].ref)
            self.stop.wait(rng.uniform(0.0, 0.3))
            for image in removed:
                self._loop_step(engine, "load", "load", "-q", "-i", str(image.archive))
            self.stop.wait(rng.uniform(0.0, 0.3))

    def _loop_step(self, engine: str, name: str, *args: str) -> None:
        done = self.run_tool(engine, *args, check=False)
        key = name if done.returncode == 0 else f"{name}-failed"
        with self.lock:
            removals = self.tally[engine].removals
            removals[key] = removals.get(key, 0) + 1

    # --- the runs --------------------------------------------------------------------------------------

    def plan(self, runs: int) -> list[PlannedRun]:
        """Every run's engine, argv and TARGET, engines interleaved."""
        planned = []
        for n in range(runs):
            for engine in self.engines:
                image = self.random.choice(self.images)
                method = self.random.choice([m for m in METHODS[engine] if m != "mount" or os.geteuid() == 0])
                fmt = self.random.choice(FORMATS)
                command = self.random.choice(("convert", "refresh"))
                if command == "convert":
                    target = self.targets / f"{engine}-{n}-{image.key}-{method}.{fmt}"
                else:  # a few TARGETs that the refreshes of one image share (their lock orders them)
                    target = self.targets / f"{engine}-refresh-{image.key}.{fmt}"
                argv = [*self.cdisk, command, "-q", "--pull", "never", "--engine", engine,
                        "--method", method, "-O", fmt, image.ref, str(target)]
                # Half the refreshes find TARGET's mtime changed: they convert again, rather than say unchanged.
                touch = command == "refresh" and self.random.random() < 0.5
                planned.append(PlannedRun(engine, command, argv, target, image, fmt, touch))
        return planned

    def run_one(self, run: PlannedRun) -> None:
        engine, argv, target, image, fmt, command = run.engine, run.argv, run.target, run.image, run.fmt, run.command
        if self.stop.is_set():
            return
        if run.touch:
            with suppress(FileNotFoundError):
                os.utime(target)
        # Run from the work dir: `python -m cdisk` from the repository's root would take ./cdisk whatever
        # PYTHONPATH says (a PYTHONPATH of another tree's package runs that cdisk: before and after).
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL,
                                  cwd=self.work, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as expired:  # killed: a hang is a failure like any other
            done = subprocess.CompletedProcess(argv, -9, "", f"stress: timed out after {RUN_TIMEOUT} s; "
                                               f"{expired.stderr!r}\n")
        lock = target.parent / f".{target.name}.cdisk.lock" if command == "refresh" else None
        with _locked(lock):  # no refresh replaces TARGET while it is compared
            present = target.exists()
            right = present and self._same(target, fmt, image)
            wrong = ""
            if present and not right:
                wrong = self._what_it_holds(target, fmt)
                if command == "refresh":  # the next refresh writes it afresh, rather than say "unchanged"
                    target.unlink()
                    (target.parent / f"{target.name}.cdisk.json").unlink(missing_ok=True)
                else:
                    target.rename(target.with_name(f"wrong-{target.name}"))
        one_line = done.stderr.count("\n") == 1 and done.stderr.startswith("cdisk: error: ")
        with self.lock:
            tally = self.tally[engine]
            tally.runs += 1
            if done.returncode == 0:
                if right:
                    tally.ok += 1
                else:
                    tally.wrong_disks += 1
                    self.failures.append(Failure("wrong-disk", argv, 0, done.stderr, wrong or "no TARGET written"))
                return
            code = str(done.returncode)
            tally.failed[code] = tally.failed.get(code, 0) + 1
            message = f"{code}: {_masked(done.stderr.strip().splitlines()[0] if done.stderr.strip() else '')}"
            tally.messages[message] = tally.messages.get(message, 0) + 1
            if not one_line or done.returncode not in DOCUMENTED or "unexpected" in done.stderr:
                tally.bad_failures += 1
                self.failures.append(Failure("bad-failure", argv, done.returncode, done.stderr))
            if present and not right:  # a failed run never leaves a wrong disk (refresh: TARGET as it was)
                tally.wrong_disks += 1
                self.failures.append(Failure("wrong-disk", argv, done.returncode, done.stderr, wrong))
            elif present and command == "convert":  # the right disk, but the run said it failed
                tally.left_targets += 1
                self.failures.append(Failure("left-target", argv, done.returncode, done.stderr,
                                             "a failed convert left its (right) disk at TARGET"))

    def _same(self, target: Path, fmt: str, image: StressImage) -> bool:
        compared = self.run_tool("qemu-img", "compare", "-q", "-f", fmt, "-F", image.fmt, target, image.disk,
                                 check=False)
        return compared.returncode == 0

    def _what_it_holds(self, target: Path, fmt: str) -> str:
        for other in self.images:
            if self._same(target, fmt, other):
                return f"holds the disk of image {other.key}"
        return "holds no image's disk"

    # --- afterwards ----------------------------------------------------------------------------------------

    def leftovers(self, roots: list[str], mounts_before: set[str]) -> dict[str, list[str]]:
        """Mounts under the stores that were not there before, cdisk's temp names, processes of the runs."""
        mounts = [m for m in mounts_under(roots) if m not in mounts_before]
        names = [str(p) for directory in (self.targets, self.tmp) for p in directory.rglob("*")
                 if TEMP_NAME.search(p.name)]
        processes = []
        needle = f"{TAG_VARIABLE}={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    processes.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return {"mounts": mounts, "temp_names": names, "processes": processes}


def cannot_start(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(2)


def _masked(message: str) -> str:
    """An error line with what differs from run to run (paths, IDs, names of the images) put as `…`."""
    message = re.sub(r"localhost/cdisk-stress/\w+:latest", "IMAGE", message)
    message = re.sub(r"/[^\s;,`']*", "PATH", message)
    return re.sub(r"\b[0-9a-f]{12,64}\b", "ID", message)[:200]


@contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def own_dockerd(work: Path) -> Iterator[tuple[str, str]]:
    """A dockerd of the stress's own, as the test suite starts its own (`tests/private_dockerd.py`): private
    socket, data and exec roots in `work`, no iptables, no bridge; stopped and removed afterwards. Its
    DOCKER_HOST and data root."""
    root = work / "dockerd"
    root.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in (TAG_VARIABLE, "DOCKER_HOST")}
    with ExitStack() as stack:
        try:
            host = stack.enter_context(private_dockerd(root, env))
        except RuntimeError as failed:
            cannot_start(f"stress: {failed}")
        yield host, str(root / "data")


def render(result: dict[str, object]) -> str:
    lines = [f"cdisk stress: {result['runs_per_engine']} runs per engine, {result['concurrency']} at once, "
             f"{result['seconds']:.0f} s", "",
             "| engine | runs | ok | failed (exit code: runs) | wrong disks | bad failures | failed, TARGET left "
             "| removal loop |", "|---|---:|---:|---|---:|---:|---:|---|"]
    engines: dict[str, dict[str, object]] = result["engines"]  # type: ignore[assignment]
    for engine, tally in engines.items():
        failed = ", ".join(f"{code}: {n}" for code, n in sorted(tally["failed"].items())) or "-"  # type: ignore[attr-defined]
        loop = ", ".join(f"{op} {n}" for op, n in sorted(tally["removals"].items()))  # type: ignore[attr-defined]
        lines.append(f"| {engine} | {tally['runs']} | {tally['ok']} | {failed} | {tally['wrong_disks']} | "
                     f"{tally['bad_failures']} | {tally['left_targets']} | {loop} |")
    for engine, tally in engines.items():
        for message, n in sorted(tally["messages"].items(), key=lambda item: -item[1]):  # type: ignore[attr-defined]
            lines.append(f"{engine}: {n} × {message}")
    leftovers: dict[str, list[str]] = result["leftovers"]  # type: ignore[assignment]
    left = [f"{kind}: {', '.join(items)}" for kind, items in leftovers.items() if items]
    lines.append("leftovers: " + ("; ".join(left) if left else "none"))
    for failure in result["failures"]:  # type: ignore[attr-defined]
        lines.append(f"{failure['kind']}: {shlex.join(failure['argv'])} -> exit {failure['code']}"
                     f"{', ' + failure['detail'] if failure['detail'] else ''}: {failure['stderr'].strip()[:300]}")
    lines.append("result: " + ("PASS" if result["passed"] else "FAIL"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="podman,docker", help="podman, docker or both (default: both)")
    parser.add_argument("--runs", type=int, default=100, help="cdisk runs per engine (default: 100)")
    parser.add_argument("--concurrency", type=int, default=50, help="runs at once (default: 50)")
    parser.add_argument("--seconds", type=float, default=0,
                        help="start no run after this many seconds (default: 0, no limit)")
    parser.add_argument("--docker-host", default="",
                        help="an empty docker daemon to use (default: one of the stress's own)")
    parser.add_argument("--cdisk", default=f"{sys.executable} -m cdisk",
                        help="the cdisk command line to run (default: this Python's `-m cdisk`)")
    parser.add_argument("--seed", type=int, default=None, help="the random plan's seed (default: random)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - set(METHODS) or args.runs < 1 or args.concurrency < 1:
        parser.error("--engines takes podman and/or docker; --runs and --concurrency at least 1")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="stress-"))
    try:
        with (own_dockerd(work) if "docker" in engines and not args.docker_host
              else _given(args.docker_host)) as (docker_host, docker_root):
            stress = Stress(work, engines, docker_host, seed, _command(args.cdisk))
            try:
                result = _run(stress, args, seed, docker_root)
            finally:
                for engine in engines:
                    stress.run_tool(engine, "image", "prune", "-a", "-f", check=False)
                if "podman" in engines:
                    stress.run_tool("podman", "system", "reset", "-f", check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["passed"] else 1


def _command(line: str) -> list[str]:
    """--cdisk's words, a relative path first made absolute: the runs start in the work dir."""
    words = shlex.split(line)
    if not words:
        cannot_start("stress: --cdisk is empty")
    if os.sep in words[0]:
        words[0] = os.path.abspath(words[0])
    return words


@contextmanager
def _given(docker_host: str) -> Iterator[tuple[str, str]]:
    root = ""
    if docker_host:
        info = subprocess.run(["docker", "--host", docker_host, "info", "--format", "{{.DockerRootDir}}"],
                              capture_output=True, text=True)
        if info.returncode != 0:
            cannot_start(f"stress: no docker daemon answers at {docker_host}: {info.stderr.strip()[-300:]}")
        root = info.stdout.strip()
    yield docker_host, root


def _run(stress: Stress, args: argparse.Namespace, seed: int, docker_root: str) -> dict[str, object]:
    try:
        stress.prepare()
    except (OSError, subprocess.CalledProcessError) as error:
        detail = error.stderr.strip().splitlines()[-1:] if isinstance(error, subprocess.CalledProcessError) else []
        cannot_start(f"stress: cannot set up the images: {error}{': ' + detail[0] if detail else ''}")
    roots = [str(stress.store)] + ([docker_root] if docker_root else [])
    mounts_before = mounts_under(roots)
    planned = stress.plan(args.runs)
    start = time.monotonic()
    loops = [threading.Thread(target=stress.removal_loop, args=(engine,)) for engine in stress.engines]
    for loop in loops:
        loop.start()
    if args.seconds:
        timer = threading.Timer(args.seconds, stress.stop.set)
        timer.start()
    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            for future in [pool.submit(stress.run_one, run) for run in planned]:
                future.result()
    finally:
        stress.stop.set()
        if args.seconds:
            timer.cancel()
        for loop in loops:
            loop.join()
    seconds = time.monotonic() - start
    leftovers = stress.leftovers(roots, mounts_before)
    for mount in sorted(leftovers["mounts"], reverse=True):  # reported; unmounted so the store can go
        subprocess.run(["umount", "-l", mount], capture_output=True)
    tallies = {engine: asdict(tally) for engine, tally in stress.tally.items()}
    passed = not any(leftovers.values()) and all(t.wrong_disks == t.bad_failures == t.left_targets == 0
                                                 for t in stress.tally.values())
    return {"seed": seed, "runs_per_engine": args.runs, "concurrency": args.concurrency, "seconds": seconds,
            "engines": tallies, "wrong_disks": sum(t.wrong_disks for t in stress.tally.values()),
            "leftovers": leftovers, "failures": [asdict(f) for f in stress.failures], "passed": passed}


if __name__ == "__main__":
    sys.exit(main())
