"""A typed job run by a child cdisk in the engine's user namespace (rootless podman can mount an image only
there), relayed back as JSON lines.

The parent names the job's function (`module:function`, taking the job and a Progress, returning a
JSON-able result) and its data; the engine starts `python -c BOOT FUNCTION JOB` in its namespace (`podman
unshare`). The child's first line is a hello, sent before cdisk is even imported: without it the engine
could not start the child (no subordinate ids, no user namespaces) and the caller may fall back to another
method; after it, any failure is the child's own — its CdiskError with its exit code, or a crash — and is
reported, never papered over. Then come stage, update, and a result or an error. Whatever the child writes
is owned by the user, whose uid is root's inside the namespace.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from typing import Any

from cdisk.core import processes, signals
from cdisk.core.engines.seam import Engine
from cdisk.core.errors import CdiskError, ChildCrashed, ChildError, Interrupted, UserNamespaceUnavailable
from cdisk.core.progress import Progress

HELLO = "cdisk-userns-child"
# The child's first act, before any of cdisk is imported: from the hello on, a failure is the child's.
_BOOT = (f"import sys; print({json.dumps({'hello': HELLO})!r}, flush=True); "
         "from cdisk.core.reading.userns import main; sys.exit(main(sys.argv[1], sys.argv[2]))")


def run(engine: Engine, function: str, job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Run `function(job, progress)` in a child in `engine`'s user namespace, relaying its progress.

    Raises:
        UserNamespaceUnavailable: the engine could not start the child.
        ChildError: the child reported a CdiskError (its exit code kept).
        ChildCrashed: the child started and died without a word.
    """
    argv = [sys.executable, "-c", _BOOT, function, json.dumps(job)]
    # stderr to a file, not a pipe: read only at the end, a pipe could fill and stall the child.
    with tempfile.TemporaryFile() as stderr, \
            engine.in_user_namespace(argv, stdout=subprocess.PIPE, stderr=stderr) as proc:
        assert proc.stdout is not None
        started, result = False, None
        for line in proc.stdout:
            event = _event(line)
            if event.get("hello") == HELLO:
                started = True
            elif "stage" in event:
                progress.stage(event["stage"])
            elif "update" in event:
                progress.update(*event["update"])
            elif "warn" in event:
                progress.warn(event["warn"])
            elif "result" in event:
                result = event["result"]
            elif "error" in event:
                raise ChildError(event["error"], int(event["exit_code"]))
        code = proc.wait()
        err = processes.file_tail(stderr).decode(errors="replace")
        shown = processes.argv_of(proc)
    if isinstance(result, dict) and code == 0:
        return result
    last = processes.last_line(err, code)
    if not started:
        raise UserNamespaceUnavailable(f"{engine.name} unshare failed: {last}", shown, code, err)
    raise ChildCrashed(f"the conversion inside {engine.name} unshare crashed: {last}; please report it (with the "
                       "output of --debug); --method save avoids the user namespace", shown, code, err)


def _event(line: bytes) -> dict[str, Any]:
    """One JSON line of the child; anything else on its stdout (a stray line of a tool) is no event."""
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


class _JsonLines:
    """Progress as JSON lines on stdout, for the parent outside the namespace."""

    def stage(self, name: str) -> None:
        _emit({"stage": name})

    def update(self, done: float, total: float) -> None:
        _emit({"update": [done, total]})

    def warn(self, message: str) -> None:
        _emit({"warn": message})


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(function: str, job_text: str) -> int:
    """The child: run the job's function, reporting as JSON lines."""
    signals.stop_on_signals()
    module, _, name = function.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(json.loads(job_text), _JsonLines())
    except CdiskError as error:
        _emit({"error": error.message, "exit_code": error.exit_code})
        return error.exit_code
    except Interrupted as stop:
        return stop.exit_code
    _emit({"result": result})
    return 0
