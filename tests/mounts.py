"""The mounts a test or a script left: standard library only (the scripts import it without pytest)."""

from __future__ import annotations

from pathlib import Path


def mounts_under(roots: list[str]) -> set[str]:
    """The mount points at or below any of `roots` in this process's mount namespace (mountinfo's fifth field)."""
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == root or point.startswith(root.rstrip("/") + "/") for root in roots):
            found.add(point)
    return found
