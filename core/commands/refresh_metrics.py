"""`refresh --metrics-file PATH`: the outcome of each refresh in node_exporter's textfile format, for a fleet's
monitoring (Prometheus scrapes node_exporter, which reads `*.prom` files from its textfile directory).

One file per target, replaced whole (written beside it under a temp name, then renamed: node_exporter never reads
half a file). Every sample carries the target's path as its `target` label; the last success is carried over from
the file the previous run wrote, so a run that failed still says when the target was last known good.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from cdisk.core import target
from cdisk.core.errors import TargetError

OUTCOMES = ("updated", "unchanged", "not_checked", "failed")
_PREFIX = "cdisk_refresh_"
# The previous file is cdisk's own few hundred bytes; more is not one (and is not read whole).
_READ_LIMIT = 64 << 10
_LAST_SUCCESS = re.compile(rf"^{_PREFIX}last_success_timestamp_seconds{{[^\n]*}} ([0-9.e+]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """One refresh, as the metrics tell it: `outcome` one of OUTCOMES; `image` and `digest` what TARGET holds
    ("" where nothing is known); `written` the bytes of a new TARGET (0 when unchanged or failed)."""

    target: str
    outcome: str
    exit_code: int
    ended: float  # Unix time
    seconds: float
    written: int = 0
    image: str = ""
    digest: str = ""


def check_place(path: str) -> None:
    """Refuse a metrics file no run could write, before any work: its directory must exist.

    Raises:
        TargetError: the directory does not exist, or PATH is a directory.
    """
    if os.path.isdir(path):
        raise TargetError(f"--metrics-file {path} is a directory; name a file in it (e.g. {path}/cdisk.prom)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise TargetError(f"--metrics-file {path}: no such directory {directory}; create it (node_exporter's "
                          "--collector.textfile.directory)")


def _label(value: str) -> str:
    """A label value as the text format escapes it: backslash, double quote and line feed (a name's bytes that are
    no UTF-8 as backslash escapes: the file is UTF-8)."""
    value = os.fsencode(value).decode("utf-8", "backslashreplace")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def previous_success(path: str) -> float | None:
    """The last success the file at `path` records, or None (no file, not cdisk's, unreadable)."""
    try:
        # Never through a link, never blocking on a FIFO someone put there: a regular file of cdisk's, or nothing.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, _READ_LIMIT).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    found = _LAST_SUCCESS.search(text)
    try:
        return float(found.group(1)) if found else None
    except ValueError:
        return None


def render(outcome: Outcome, last_success: float | None) -> str:
    """The file's text: each metric's HELP and TYPE, then its samples."""
    where = f'target="{_label(outcome.target)}"'
    metrics: list[tuple[str, str, list[tuple[str, float]]]] = [
        ("last_run_timestamp_seconds", "When the last refresh of the target ended (Unix time).",
         [("", outcome.ended)]),
        ("last_success_timestamp_seconds", "When a refresh of the target last ended updated or unchanged (not "
         "not_checked) (Unix time).", [("", last_success)] if last_success is not None else []),
        ("outcome", "The last refresh's outcome: 1 for the one it had (not_checked: no registry answered).",
         [(f',outcome="{name}"', 1.0 if name == outcome.outcome else 0.0) for name in OUTCOMES]),
        ("exit_code", "The last refresh's exit code (cdisk(1)).", [("", outcome.exit_code)]),
        ("duration_seconds", "How long the last refresh took.", [("", outcome.seconds)]),
        ("written_bytes", "The bytes the new target holds on disk, as allocated (0 when unchanged or failed).",
         [("", outcome.written)]),
        ("image_info", "The image and digest the target holds (always 1).",
         [(f',image="{_label(outcome.image)}",digest="{_label(outcome.digest)}"', 1.0)] if outcome.image else []),
    ]
    lines = []
    for name, text, samples in metrics:
        if not samples:
            continue
        lines += [f"# HELP {_PREFIX}{name} {text}", f"# TYPE {_PREFIX}{name} gauge"]
        lines += [f"{_PREFIX}{name}{{{where}{labels}}} {value:.17g}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def write(path: str, outcome: Outcome) -> None:
    """Replace the file at `path` with `outcome`, whole: written under a temp name beside it, then renamed.

    Raises:
        TargetError: it cannot be written.
    """
    success = outcome.ended if outcome.outcome in ("updated", "unchanged") else previous_success(path)
    target.replace_text(os.path.abspath(path), render(outcome, success))
