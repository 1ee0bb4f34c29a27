"""A witness of podman for a real cdisk: a `podman` first on PATH that logs each call's argv, then runs the
real podman with the same argv, so a test sees what cdisk asked of podman without changing what podman does.

Every call but `podman save -o DIR` becomes the real podman at once (exec, same pid). A save runs the real
podman as a child, and then logs every file it left in DIR: the proof of where the layers really went.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

_FAKE = """#!{python}
import json, os, subprocess, sys
REAL, LOG = {real!r}, {log!r}
args = sys.argv[1:]
if args[:1] == ["save"] and "-o" in args:
    code = subprocess.call([REAL, *args])
    destination = args[args.index("-o") + 1]
    saved = {{}}
    for directory, _, names in os.walk(destination):
        for name in names:
            path = os.path.join(directory, name)
            saved[os.path.relpath(path, destination)] = os.path.getsize(path)
    with open(LOG, "a") as log:
        log.write(json.dumps({{"argv": args, "code": code, "saved": saved}}) + "\\n")
    sys.exit(code)
with open(LOG, "a") as log:
    log.write(json.dumps({{"argv": args}}) + "\\n")
os.execv(REAL, [REAL, *args])
"""


@dataclass(frozen=True)
class PodmanCall:
    """One podman run: its arguments and, for a `save -o DIR`, its exit code and what it left in DIR (each
    file's path in DIR -> size), as it ended.
    """

    argv: list[str]
    code: int | None = None
    saved: dict[str, int] | None = None

    @property
    def destination(self) -> str:
        """Where a `podman save` wrote (its `-o`)."""
        return self.argv[self.argv.index("-o") + 1]


class RecordingPodman:
    """A podman in `bin_dir` that logs every call before it runs the real one; `env` puts it first on PATH."""

    def __init__(self, bin_dir: Path) -> None:
        real = shutil.which("podman")
        assert real, "podman is missing: run scripts/test"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.log = bin_dir / "podman.log"
        self.log.touch()
        (bin_dir / "podman").write_text(_FAKE.format(python=sys.executable, real=real, log=str(self.log)))
        (bin_dir / "podman").chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def calls(self) -> list[PodmanCall]:
        """Every podman run so far, in order."""
        return [PodmanCall(**json.loads(line)) for line in self.log.read_text().splitlines()]

    def saves(self) -> list[PodmanCall]:
        """The `podman save` runs so far."""
        return [call for call in self.calls() if call.argv[:1] == ["save"]]

    def services(self) -> list[PodmanCall]:
        """The `podman system service` runs so far (cdisk's private services)."""
        return [call for call in self.calls() if call.argv[:2] == ["system", "service"]]
