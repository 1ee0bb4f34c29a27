"""A fleet on one machine (issue 25, item 3): N hosts keep a VM disk current with `cdisk refresh`, against a
registry (upstream) and a pull-through cache in front of it, both Debian's docker-registry on loopback.

Each host is a podman store of its own (CONTAINERS_STORAGE_CONF: graphroot and runroot in the fleet's dir), its
own TARGET, record and metrics file, and a registries.conf (CONTAINERS_REGISTRIES_CONF) that names the cache as
the upstream's mirror, as a fleet behind a pull-through cache is configured. The rounds: `first` (every host
pulls the image: through the cache, which fetches it once from the upstream), `unchanged` (nothing moved),
`update` (a new image pushed to the tag: every host pulls it once), then `unchanged` and `update` again with the
timer's jitter (`--jitter S`: each host starts at a random moment within S, as systemd's RandomizedDelaySec
spreads them), and a last `update` where one host (a canary) refreshes first and warms the cache, then the rest.
Within a round without jitter, `--concurrency` hosts run at once (the worst case: timers that fire together).

For each round: the hosts' outcomes (from their metrics files, read back by Prometheus' own parser where
installed), their wall time (median, p95), and at the upstream and at the cache the requests by kind (manifest
HEAD, manifest GET, blob GET, other) and bytes sent, from each registry's own access log, with the busiest
second's request count (what jitter does to the peak).

Usage: scripts/fleet [--hosts N] [--concurrency C] [--jitter S] [--size SIZE] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mounts import mounts_under  # noqa: E402
from tests.registries import Registry, Request  # noqa: E402
from tests.stores import storage_conf  # noqa: E402

CDISK = str(ROOT / ".venv" / "bin" / "cdisk")
REPOSITORY = "fleet/vm"


@dataclass
class Host:
    name: str
    env: dict[str, str]
    target: Path
    metrics: Path


@dataclass
class Ran:
    host: str
    seconds: float
    code: int
    outcome: str
    stderr: str


def sh(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"fleet: {' '.join(map(str, argv))} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def store_env(base: dict[str, str], home: Path, registries: Path | None = None) -> dict[str, str]:
    """The environment of a podman of its own: a store under `home`, a TMPDIR there, and `registries`."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    conf = storage_conf(home / "storage.conf", home)
    env = {**base, "CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(home / "tmp")}
    if registries is not None:
        env["CONTAINERS_REGISTRIES_CONF"] = str(registries)
    return env


def push_image(builder: dict[str, str], work: Path, upstream: str, version: int, size: str) -> str:
    """A containerDisk whose qcow2 holds `size` of random data (as incompressible as a real disk's mostly is: the
    bytes counted are what a fleet would move), pushed to the upstream's tag; the tag's reference."""
    raw = work / f"disk-{version}.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", raw, size)  # its size as qemu-img reads `size`, then filled
    with open(raw, "r+b") as f:
        for _ in range(os.path.getsize(raw) >> 20):
            f.write(os.urandom(1 << 20))
    context = work / f"context-{version}"
    context.mkdir(exist_ok=True)
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, context / "disk.qcow2")
    raw.unlink()
    (context / "Containerfile").write_text("FROM scratch\nCOPY --chown=107:107 disk.qcow2 /disk/\n")
    local = f"localhost/fleet-build:{version}"
    sh("podman", "build", "-q", "-t", local, context, env=builder)
    reference = f"{upstream}/{REPOSITORY}:latest"
    sh("podman", "push", "-q", "--tls-verify=false", local, reference, env=builder)
    return reference


def refresh(host: Host, reference: str) -> Ran:
    start = time.perf_counter()
    done = subprocess.run([CDISK, "refresh", "-q", "--metrics-file", str(host.metrics), reference, str(host.target)],
                          capture_output=True, text=True, env=host.env)
    seconds = time.perf_counter() - start
    return Ran(host.name, seconds, done.returncode, _outcome(host.metrics), done.stderr.strip())


def _outcome(metrics: Path) -> str:
    """The outcome the host's metrics file says (`cdisk_refresh_outcome{outcome=…} 1`)."""
    from prometheus_client.parser import text_string_to_metric_families  # the test extras (scripts/fleet installs them)

    for family in text_string_to_metric_families(metrics.read_text()):
        for sample in family.samples:
            if sample.name == "cdisk_refresh_outcome" and sample.value == 1:
                return str(sample.labels["outcome"])
    return "?"


def run_round(hosts: list[Host], reference: str, concurrency: int, jitter: float, seed: int) -> list[Ran]:
    """Every host refreshes once: `concurrency` at a time, or (with `jitter`) each at its own random moment."""
    if not jitter:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda host: refresh(host, reference), hosts))
    rng = random.Random(seed)
    delays = {host.name: rng.uniform(0, jitter) for host in hosts}
    results: list[Ran] = []
    lock = threading.Lock()

    def later(host: Host) -> None:
        time.sleep(delays[host.name])
        ran = refresh(host, reference)
        with lock:
            results.append(ran)

    threads = [threading.Thread(target=later, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def kinds(requests: list[Request]) -> dict[str, object]:
    """Requests by kind, the bytes sent, and the busiest second's count."""
    counted: Counter[str] = Counter()
    for r in requests:
        if "/manifests/" in r.uri:
            counted[f"manifest {r.method}"] += 1
        elif "/blobs/" in r.uri:
            counted[f"blob {r.method}"] += 1
        else:
            counted[f"other {r.method}"] += 1
    per_second = Counter(r.when for r in requests)
    return {"requests": len(requests), "by_kind": dict(sorted(counted.items())),
            "bytes": sum(r.bytes for r in requests), "peak_per_second": max(per_second.values(), default=0)}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summary(name: str, ran: list[Ran], upstream: dict[str, object], cache: dict[str, object],
            seconds: float) -> dict[str, object]:
    times = [r.seconds for r in ran]
    return {"round": name, "hosts": len(ran), "wall_s": round(seconds, 2),
            "outcomes": dict(Counter(f"{r.outcome} (exit {r.code})" for r in ran)),
            "host_median_s": round(statistics.median(times), 3), "host_p95_s": round(p95(times), 3),
            "upstream": upstream, "cache": cache,
            # A host the registry did not answer (exit 10) measured nothing: a failure of the run too.
            "failures": [f"{r.host}: exit {r.code}: {r.stderr[-300:]}" for r in ran if r.code != 0][:5]}


def render(rounds: list[dict[str, object]]) -> str:
    lines = ["| round | hosts | outcomes | host median s | host p95 s | upstream requests (manifest HEAD/GET, blob "
             "GET) | upstream bytes | cache requests (manifest HEAD/GET, blob GET) | cache bytes | cache peak/s |",
             "|---|---:|---|---:|---:|---|---:|---|---:|---:|"]
    for r in rounds:
        up, cache = r["upstream"], r["cache"]
        assert isinstance(up, dict) and isinstance(cache, dict)

        def split(side: dict[str, object]) -> str:
            by = side["by_kind"]
            assert isinstance(by, dict)
            return (f"{side['requests']} ({by.get('manifest HEAD', 0)}/{by.get('manifest GET', 0)}, "
                    f"{by.get('blob GET', 0)})")

        outcomes = ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())  # type: ignore[attr-defined]
        lines.append(f"| {r['round']} | {r['hosts']} | {outcomes} | {r['host_median_s']} | {r['host_p95_s']} | "
                     f"{split(up)} | {up['bytes']} | {split(cache)} | {cache['bytes']} | {cache['peak_per_second']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50, help="hosts at once in a round without jitter")
    parser.add_argument("--jitter", type=float, default=60.0, help="the jittered rounds' spread, in seconds")
    parser.add_argument("--size", default="32M", help="the disk's data, random (qemu-img size, whole MiB)")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the fleet's dir (its logs) at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("fleet: run as root (podman stores of their own, as the tests)")
    work = Path(tempfile.mkdtemp(prefix="cdisk-fleet-", dir="/var/tmp"))
    base = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_HOST", "CONTAINER_CONNECTION")}
    registries: list[Registry] = []
    stores: list[dict[str, str]] = []
    started = time.monotonic()
    try:
        upstream = Registry(work / "upstream", base)
        registries.append(upstream)
        cache = Registry(work / "cache", base, proxy=f"http://{upstream.address}")
        registries.append(cache)
        mirrors = work / "registries.conf"
        mirrors.write_text(f'[[registry]]\nprefix = "{upstream.address}"\nlocation = "{upstream.address}"\n'
                           f'insecure = true\n[[registry.mirror]]\nlocation = "{cache.address}"\ninsecure = true\n')
        builder = store_env(base, work / "builder")
        stores.append(builder)
        hosts = []
        for number in range(args.hosts):
            home = work / f"host-{number:04d}"
            hosts.append(Host(home.name, store_env(base, home, mirrors), home / "vm.raw", home / "cdisk.prom"))
            stores.append(hosts[-1].env)
        reference = push_image(builder, work, upstream.address, 1, args.size)
        print(f"fleet: {args.hosts} hosts, upstream {upstream.address}, cache {cache.address}, {args.size} of data",
              file=sys.stderr)
        rounds = []
        plan = [("first", 0.0), ("unchanged", 0.0), ("update", 0.0), ("unchanged, jittered", args.jitter),
                ("update, jittered", args.jitter), ("update, a canary first", 0.0)]
        for name, jitter in plan:
            if name.startswith("update"):
                push_image(builder, work, upstream.address, len(rounds) + 2, args.size)
            marks = upstream.mark(), cache.mark()
            begun = time.monotonic()
            if name.endswith("canary first"):  # one host warms the cache, then the rest at once
                ran = [refresh(hosts[0], reference), *run_round(hosts[1:], reference, args.concurrency, 0.0, 0)]
            else:
                ran = run_round(hosts, reference, args.concurrency, jitter, args.seed)
            took = time.monotonic() - begun
            time.sleep(0.5)  # the registries write their access log after the response
            done = summary(name, ran, kinds(upstream.requests(marks[0])), kinds(cache.requests(marks[1])), took)
            rounds.append(done)
            print(f"fleet: {name}: {done['outcomes']} in {took:.1f} s", file=sys.stderr)
        print(render(rounds))
        print(f"\nfleet: {time.monotonic() - started:.0f} s in all", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({"hosts": args.hosts, "concurrency": args.concurrency,
                                             "jitter_s": args.jitter, "size": args.size, "rounds": rounds},
                                            indent=2) + "\n")
        if any(r["failures"] for r in rounds):
            raise SystemExit(1)
    finally:
        for registry in registries:
            registry.stop()
        # Each store as podman leaves it (its overlay home may be mounted privately): podman removes it.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda env: subprocess.run(["podman", "system", "reset", "-f"], env=env,
                                                     capture_output=True), stores))
        # What podman leaves mounted (its overlay home, mounted privately) goes too: deepest first.
        for point in sorted(mounts_under([str(work)]), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"fleet: kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
