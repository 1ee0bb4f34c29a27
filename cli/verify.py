"""`cdisk verify IMAGE TARGET`: does TARGET hold exactly the image's disk?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdisk.cli.output import report
from cdisk.cli.switches import TargetSwitches
from cdisk.core.errors import EXIT_DIFFERENT, EXIT_OK
from cdisk.core.progress import Progress

if TYPE_CHECKING:
    from cdisk.core.commands.verify import Verdict


def summary(verdict: Verdict) -> str:
    if verdict.identical:
        return f"{verdict.target} holds exactly {verdict.disk} of {verdict.image}"
    return (f"{verdict.target} differs from {verdict.disk} of {verdict.image} "
            f"from offset {verdict.first_difference}")


class Verify(TargetSwitches):
    """Check that TARGET holds exactly the disk of IMAGE (exit 0), or say where it first differs (exit 8)."""

    def main(self, image: str, target: str) -> int:
        from cdisk.core.commands.verify import verify

        def work(progress: Progress) -> Verdict:
            return verify(self.image_request(image), self.read_request(), target, progress)

        return report(self, work, summary, lambda verdict: EXIT_OK if verdict.identical else EXIT_DIFFERENT)
