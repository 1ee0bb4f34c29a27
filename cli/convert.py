"""`cdisk convert IMAGE TARGET`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plumbum import cli

from cdisk.cli.output import report
from cdisk.cli.switches import WriteSwitches
from cdisk.core.progress import Progress
from cdisk.core.sizes import size_text

if TYPE_CHECKING:
    from cdisk.core.commands.convert import ConvertResult


def summary(result: ConvertResult) -> str:
    return (f"{result.disk} ({result.source_format}, {size_text(result.virtual_size)}) of {result.image} "
            f"-> {result.target} ({result.target_format}) in {result.seconds:.2f} s [{result.method}]")


class Convert(WriteSwitches):
    """Convert the disk of a containerDisk IMAGE into TARGET (a file, or an existing block device)."""

    # Only convert has it: a refreshed device holds the previous disk, never zeros.
    target_is_zero = cli.Flag(["--target-is-zero"], requires=["--force"],
                              help="TARGET is a block device that already reads as zeros (a fresh thin LV): "
                                   "skip writing the disk's empty areas")

    def main(self, image: str, target: str) -> int:
        from cdisk.core.commands.convert import convert

        write = self.write_request(target, target_is_zero=bool(self.target_is_zero))

        def work(progress: Progress) -> ConvertResult:
            return convert(self.image_request(image), self.read_request(), write, progress)

        return report(self, work, summary)
