"""scripts/fleet, small: two hosts behind a pull-through cache; what the registries were asked, and nothing left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounts import mounts_under

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.needs("podman", "docker-registry", "qemu-img", "qemu-io", "bwrap")
def test_a_small_fleet_asks_by_head_and_pulls_each_update_once_per_host(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    before = set(Path("/var/tmp").glob("cdisk-fleet-*"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fleet.py"), "--hosts", "2", "--concurrency", "2",
                           "--jitter", "1", "--size", "2M", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    rounds = {r["round"]: r for r in json.loads(out.read_text())["rounds"]}
    for name in ("unchanged", "unchanged, jittered"):
        assert rounds[name]["outcomes"] == {"unchanged (exit 0)": 2}
        assert rounds[name]["cache"]["by_kind"] == {"manifest HEAD": 2}  # one HEAD a host, no manifest GET
    for name in ("first", "update", "update, jittered", "update, a canary first"):
        assert rounds[name]["outcomes"] == {"updated (exit 0)": 2}
        assert rounds[name]["cache"]["by_kind"]["manifest GET"] == 2  # pulled once per host
        # At the upstream once, or once per host that missed the cache at the same moment (docker-registry's proxy
        # does not merge concurrent misses: docs/fleet.md).
        assert 1 <= rounds[name]["upstream"]["by_kind"]["manifest GET"] <= 2
    # A canary warmed the cache: the upstream sent the new image as for one host (its manifest once; its config and
    # layer blobs, each fetched twice by docker-registry 2.8's proxy on its first pull), nothing for the other host.
    warmed = rounds["update, a canary first"]["upstream"]["by_kind"]
    assert warmed["manifest GET"] == 1 and warmed["blob GET"] <= 4
    assert set(Path("/var/tmp").glob("cdisk-fleet-*")) == before
    assert not any("cdisk-fleet-" in m for m in mounts_under(["/var/tmp"]))
