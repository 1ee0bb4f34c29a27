"""A witness of an engine's CLI for a real cdisk: a `podman` (or `docker`) first on PATH that logs each call's
argv, then runs the real one with the same argv, so a test sees what cdisk asked of the engine without changing
what the engine does.

Every call but a save becomes the real tool at once (exec, same pid). A save runs the real tool as a child,
and then logs every file it left at DEST (podman's `-o DEST`: a directory; docker's standard output: one
archive): the proof of where the layers really went. docker's calls start with `--host SOCKET`, which the log
leaves out.
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
command = args[2:] if args[:1] == ["--host"] else args
if command[:1] == ["save"]:
    destination = command[command.index("-o") + 1] if "-o" in command else os.readlink("/proc/self/fd/1")
    code = subprocess.call([REAL, *args])
    saved = {{}}
    if os.path.isfile(destination):
        saved[os.path.basename(destination)] = os.path.getsize(destination)
    for directory, _, names in os.walk(destination):
        for name in names:
            path = os.path.join(directory, name)
            saved[os.path.relpath(path, destination)] = os.path.getsize(path)
    with open(LOG, "a") as log:
        log.write(json.dumps({{"argv": command, "code": code, "saved": saved, "destination": destination}}) + "\\n")
    sys.exit(code)
with open(LOG, "a") as log:
    log.write(json.dumps({{"argv": command}}) + "\\n")
os.execv(REAL, [REAL, *args])
"""


@dataclass(frozen=True)
class EngineCall:
    """One run of the engine's CLI: its arguments and, for a save, where it wrote (`destination`: its `-o`, or the
    file its standard output was), its exit code and what it left there (each file's path in it, or its own name
    -> size), as it ended.
    """

    argv: list[str]
    code: int | None = None
    saved: dict[str, int] | None = None
    destination: str | None = None


class RecordingEngine:
    """A `tool` (podman or docker) in `bin_dir` that logs every call before it runs the real one; `env` puts it
    first on PATH.
    """

    def __init__(self, bin_dir: Path, tool: str = "podman") -> None:
        real = shutil.which(tool)
        assert real, f"{tool} is missing: run scripts/test"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.log = bin_dir / f"{tool}.log"
        self.log.touch()
        (bin_dir / tool).write_text(_FAKE.format(python=sys.executable, real=real, log=str(self.log)))
        (bin_dir / tool).chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def calls(self) -> list[EngineCall]:
        """Every run so far, in order."""
        return [EngineCall(**json.loads(line)) for line in self.log.read_text().splitlines()]

    def saves(self) -> list[EngineCall]:
        """The `save` runs so far."""
        return [call for call in self.calls() if call.argv[:1] == ["save"]]

    def services(self) -> list[EngineCall]:
        """The `podman system service` runs so far (cdisk's private services)."""
        return [call for call in self.calls() if call.argv[:2] == ["system", "service"]]
