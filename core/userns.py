"""The mount method for rootless podman: the read and qemu-img run inside `podman unshare`.

Rootless podman can mount an image only inside its user namespace, so the conversion after image
resolution runs there, in a child (`python -c BOOT JOB`). The child speaks JSON lines on its stdout:
first a hello, before cdisk is even imported, then stage, update, result or error. The hello draws
the line between the two ways this can fail: without it `podman unshare` could not start the child
(no subordinate ids, no user namespaces), and `auto` falls back to the save method; after it, any
failure is the child's own — its CdiskError with its exit code, or a crash — and is reported, never
papered over by a fallback. The target it writes is owned by the user, whose uid is root's inside
the namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, Any

from cdisk.core import processes
from cdisk.core.errors import CdiskError, Interrupted, ToolError

if TYPE_CHECKING:
    from cdisk.core.convert import ConvertRequest, ConvertResult
    from cdisk.core.podman import Image
    from cdisk.core.progress import Progress
    from cdisk.core.target import Target


HELLO = "cdisk-userns-child"
# The child's first act, before any of cdisk is imported: from the hello on, a failure is the child's.
_BOOT = (f"import sys; print({json.dumps({'hello': HELLO})!r}, flush=True); "
         "from cdisk.core.userns import main; sys.exit(main(sys.argv[1]))")


class UserNamespaceUnavailable(ToolError):
    """`podman unshare` could not start the child (no subordinate ids, no user namespaces)."""


class ChildCrashed(ToolError):
    """The child started and then died without reporting a CdiskError: a bug, exit 1 like any other."""

    exit_code = 1


class ForwardedError(CdiskError):
    """An error the conversion inside the namespace reported, with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def convert_in_user_namespace(request: ConvertRequest, image: Image, plan: Target,
                              progress: Progress) -> ConvertResult:
    """Run `convert_image(..., "mount", ...)` inside `podman unshare`, relaying its progress."""
    from cdisk.core.convert import ConvertResult
    from cdisk.core.podman import local_store, podman_cli

    job = json.dumps({"request": asdict(request), "image": asdict(image), "target": asdict(plan)})
    argv = ["unshare", sys.executable, "-c", _BOOT, job]
    # stderr to a file, not a pipe: read only at the end, a pipe could fill and stall the child.
    with tempfile.TemporaryFile() as stderr, local_store(), \
            processes.running(podman_cli(), argv, group=True, stdout=subprocess.PIPE, stderr=stderr) as proc:
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
            elif "result" in event:
                result = ConvertResult(**event["result"])
            elif "error" in event:
                raise ForwardedError(event["error"], int(event["exit_code"]))
        code = proc.wait()
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    if result is not None and code == 0:
        return result
    last = processes.last_line(err, code)
    shown = ["podman", "unshare", sys.executable, "-c", "(cdisk's child)"]
    if not started:
        raise UserNamespaceUnavailable(f"podman unshare failed: {last}; use --method save", shown, code, err)
    raise ChildCrashed(f"the conversion inside podman unshare crashed: {last}; please report it (with the "
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


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signum)


def main(job_text: str) -> int:
    """The child: convert by the mount method inside the namespace, reporting as JSON lines."""
    from cdisk.core.convert import ConvertRequest, convert_image
    from cdisk.core.podman import Image
    from cdisk.core.target import Target

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    job = json.loads(job_text)
    image = Image(**{**job["image"], "layers": tuple(job["image"]["layers"])})
    try:
        result = convert_image(ConvertRequest(**job["request"]), image, Target(**job["target"]), "mount",
                               _JsonLines())
    except CdiskError as error:
        _emit({"error": error.message, "exit_code": error.exit_code})
        return error.exit_code
    except Interrupted as stop:
        return stop.exit_code
    _emit({"result": asdict(result)})
    return 0

