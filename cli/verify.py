"""`cdisk verify IMAGE [TARGET]`: does TARGET hold exactly the image's disk? Without TARGET: do the image's own
bytes still hash to what the image says?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdisk.cli.output import LaidOut, printable, report
from cdisk.cli.switches import TargetSwitches
from cdisk.core.errors import EXIT_DIFFERENT, EXIT_OK, UsageError
from cdisk.core.progress import Progress
from cdisk.core.request import Method

if TYPE_CHECKING:
    from cdisk.core.commands.verify import ImageVerdict, LayerFinding, Verdict

_DAMAGED = "remove the image and pull it again"


def summary(verdict: Verdict) -> str:
    if verdict.identical:
        return f"{verdict.target} holds exactly {verdict.disk} of {verdict.image}"
    return (f"{verdict.target} differs from {verdict.disk} of {verdict.image} "
            f"from offset {verdict.first_difference}")


def finding_line(verdict: ImageVerdict, layer: LayerFinding) -> str:
    """One bad layer, in one line: the layer, the file that differs, what to do."""
    again = _DAMAGED if verdict.checked == "diff IDs" else "save or pull the image again"
    where = "the store is damaged" if verdict.checked == "diff IDs" else "the file was changed or damaged"
    if layer.files and layer.reason.startswith("differs"):
        named = ", ".join(layer.files)
        return printable(f"layer {layer.digest}: {named} {layer.reason}; {where}: {again}")
    if verdict.checked == "diff IDs":
        return printable(f"layer {layer.digest}: {layer.reason}; {where}: {again}")
    return printable(f"layer {layer.digest} in {layer.path}: {layer.reason}; {where}: {again}")


def image_summary(verdict: ImageVerdict) -> str:
    if verdict.intact:
        return (f"{verdict.image}: {len(verdict.layers)} layer(s) hash to their {verdict.checked} "
                f"({verdict.bytes_read} bytes of content read)")
    return LaidOut("\n".join(finding_line(verdict, layer) for layer in verdict.bad))


class Verify(TargetSwitches):
    """Check that TARGET holds exactly the disk of IMAGE (exit 0), or say where it first differs (exit 8).
    Without TARGET, check IMAGE itself: every layer hashes to what the image says (a store's layers to their diff
    IDs, reassembled in place from the store's tar-split; a file's blobs to their digests), or one line per bad
    layer naming the file that differs (exit 8)."""

    def main(self, image: str, target: str = "") -> int:
        from cdisk.core.commands.verify import verify, verify_image

        if not target:
            def check(progress: Progress) -> ImageVerdict:
                if str(self.method) != Method.AUTO.value or self.disk_path:
                    raise UsageError("--method and --path choose how to read the disk for a TARGET; give a TARGET, "
                                     "or check IMAGE alone without them")
                return verify_image(self.image_request(image), progress)

            return report(self, check, image_summary, lambda found: EXIT_OK if found.intact else EXIT_DIFFERENT)

        def work(progress: Progress) -> Verdict:
            return verify(self.image_request(image), self.read_request(), target, progress)

        return report(self, work, summary, lambda verdict: EXIT_OK if verdict.identical else EXIT_DIFFERENT)
