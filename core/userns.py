"""The mount method for rootless podman: the read and qemu-img run inside `podman unshare`.

Rootless podman can mount an image only inside its user namespace, so the conversion after image
resolution runs there, in a child (`python -m cdisk.core.userns JOB`). The child speaks JSON lines on
its stdout (stage, update, result or error); the target it writes is owned by the user, whose uid
is root's inside the namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
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


class UserNamespaceUnavailable(ToolError):
    """`podman unshare` could not run the conversion (no subordinate ids, no user namespaces)."""


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
    argv = ["unshare", sys.executable, "-m", "cdisk.core.userns", job]
    with local_store(), processes.running(podman_cli(), argv, group=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        result = None
        for line in proc.stdout:
            event = json.loads(line)
            if "stage" in event:
                progress.stage(event["stage"])
            elif "update" in event:
                progress.update(*event["update"])
            elif "result" in event:
                result = ConvertResult(**event["result"])
            elif "error" in event:
                raise ForwardedError(event["error"], int(event["exit_code"]))
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait()
    if result is not None and code == 0:
        return result
    raise UserNamespaceUnavailable(f"podman unshare failed: {processes.last_line(err, code)}; "
                                   "use --method save", ["podman", *argv[:3]], code, err)


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


def _main(job_text: str) -> int:
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


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
