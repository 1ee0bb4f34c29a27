"""`cdisk refresh IMAGE TARGET`: make TARGET current, for cron and systemd timers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plumbum import cli

from cdisk.cli.output import report
from cdisk.cli.switches import WriteSwitches
from cdisk.core.progress import Progress
from cdisk.core.request import Pull, values

if TYPE_CHECKING:
    from cdisk.core.commands.refresh import RefreshResult


def summary(result: RefreshResult) -> str:
    if result.action == "unchanged":
        return f"unchanged: {result.target} holds {result.disk} of {result.image} ({result.image_id[:12]})"
    kept = f"; kept {', '.join(result.kept)}" if result.kept else ""
    return (f"updated: {result.target} from {result.disk} of {result.image} ({result.image_id[:12]}) "
            f"in {result.seconds:.2f} s [{result.method}]{kept}")


class Refresh(WriteSwitches):
    """Make TARGET hold the current disk of IMAGE: convert only when the image or TARGET changed."""

    pull = cli.SwitchAttr(["--pull"], cli.Set(*values(Pull)), default=Pull.NEWER.value,
                          help="When to pull IMAGE: newer (default) asks the registry whether the tag moved; "
                               "never checks the local store only; missing and always as podman's --pull")
    keep = cli.SwitchAttr(["--keep"], cli.Range(0, 99), default=0, argname="N",
                          help="Keep N previous versions (TARGET.1, …), 0 to 99 (default: 0)")
    no_wait = cli.Flag(["--no-wait"], help="Exit 9 at once when another refresh of TARGET runs, instead of waiting")
    force = cli.Flag(["-f", "--force"], help="Replace a TARGET that no refresh wrote (a file; refresh refuses block "
                                             "devices)")

    def main(self, image: str, target: str) -> int:
        from cdisk.core.commands.refresh import refresh

        # A refresh syncs the new disk before renaming it over the old: "never a broken disk where a
        # good one was" has to hold across a crash too.
        write = self.write_request(target, keep=int(self.keep), durable=True)

        def work(progress: Progress) -> RefreshResult:
            return refresh(self.image_request(image), self.read_request(), write, not self.no_wait, progress)

        return report(self, work, summary)
