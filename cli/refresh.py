"""`cdisk refresh IMAGE TARGET`: make TARGET current, for cron and systemd timers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plumbum import cli

from cdisk.cli.output import failed, report
from cdisk.cli.switches import WriteSwitches
from cdisk.core.errors import EXIT_NOT_CHECKED, EXIT_OK, BusyError, CdiskError
from cdisk.core.progress import Progress
from cdisk.core.request import Pull, values

if TYPE_CHECKING:
    from cdisk.core.commands.refresh import RefreshResult
    from cdisk.core.commands.refresh_metrics import Outcome


def summary(result: RefreshResult) -> str:
    unchecked = "" if result.checked else " (not checked: the registry did not answer)"
    if result.action == "unchanged":
        return f"unchanged: {result.target} holds {result.disk} of {result.image} ({result.image_id[:12]}){unchecked}"
    kept = f"; kept {', '.join(result.kept)}" if result.kept else ""
    return (f"updated: {result.target} from {result.disk} of {result.image} ({result.image_id[:12]}) "
            f"in {result.seconds:.2f} s [{result.method}]{kept}{unchecked}")


def _outcome(target: str, done: list[RefreshResult], code: int, seconds: float) -> Outcome:
    """The run as `--metrics-file` tells it; where it failed, TARGET holds what its record says (if anything)."""
    import os
    import time

    from cdisk.core.commands import refresh_metrics
    from cdisk.core.commands.refresh import load_record

    if done and code in (EXIT_OK, EXIT_NOT_CHECKED):
        result = done[-1]
        outcome = "not_checked" if not result.checked else result.action
        return refresh_metrics.Outcome(result.target, outcome, code, time.time(), seconds, result.written,
                                       result.image, result.digest)
    path = os.path.realpath(target)  # as a successful run names it: the file a symlink TARGET names
    record = load_record(path) if os.path.isfile(path) else None
    return refresh_metrics.Outcome(path, "failed", code, time.time(), seconds, 0, record.image if record else "",
                                   record.digest if record else "")


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
    metrics_file = cli.SwitchAttr(["--metrics-file"], str, argname="PATH",
                                  help="After the run, replace PATH with its outcome in node_exporter's textfile "
                                       "format (name it NAME.prom in the textfile directory; one per TARGET)")

    def main(self, image: str, target: str) -> int:
        import time

        from cdisk.core.commands.refresh import refresh

        started = time.monotonic()
        if self.metrics_file is not None:
            from cdisk.core.commands import refresh_metrics

            try:
                refresh_metrics.check_place(self.metrics_file)
            except CdiskError as error:
                return failed(self, error)
        # A refresh syncs the new disk before renaming it over the old: "never a broken disk where a
        # good one was" has to hold across a crash too.
        write = self.write_request(target, keep=int(self.keep), durable=True)
        done: list[RefreshResult] = []

        def work(progress: Progress) -> RefreshResult:
            done.append(refresh(self.image_request(image), self.read_request(), write, not self.no_wait, progress))
            return done[-1]

        code = report(self, work, summary, lambda result: EXIT_OK if result.checked else EXIT_NOT_CHECKED)
        if self.metrics_file is None or code == BusyError.exit_code:
            return code  # busy: the run that holds TARGET writes its own outcome
        try:
            refresh_metrics.write(self.metrics_file, _outcome(target, done, code, time.monotonic() - started))
        except CdiskError as error:
            metrics_code = failed(self, error)
            return code or metrics_code  # the refresh's own failure says more; a good run's metrics must not fail
        return code
