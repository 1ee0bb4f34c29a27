"""`cdisk ls IMAGE`: what an image holds, without converting."""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING

from cdisk.cli.output import report
from cdisk.cli.switches import ImageSwitches, size_text
from cdisk.core.progress import Progress

if TYPE_CHECKING:
    from cdisk.core.listing import Listing


def table(listing: Listing) -> str:
    """The listing as a rich table (on a terminal) or aligned plain text."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    head = (f"{listing.image}  id {listing.id[:12]}  digest {listing.digest or '-'}  "
            f"arch {listing.architecture or '-'}")
    tty = sys.stdout.isatty()
    grid = Table(box=box.SIMPLE_HEAD if tty else None)
    for column in ("path", "format", "virtual size", "file size", "layer", "offset", "refused because"):
        grid.add_column(column, overflow="fold")
    for disk in listing.disks:
        layer = "-" if disk.layer is None else f"{disk.layer} ({(disk.layer_digest or '')[7:19]})"
        grid.add_row(disk.path, disk.format or "-", size_text(disk.virtual_size), size_text(disk.file_size),
                     layer, "-" if disk.offset is None else str(disk.offset), disk.refused or "")
    out = io.StringIO()
    console = Console(file=out, width=None if tty else 400, force_terminal=tty, highlight=False)
    console.print(head)
    console.print(grid)
    for problem in listing.problems:
        console.print(f"note: {problem}")
    return out.getvalue().rstrip("\n")


class Ls(ImageSwitches):
    """List the candidate disks of IMAGE: path, format, sizes, layer and offset, and what would be refused."""

    def main(self, image: str) -> int:
        from cdisk.core.listing import list_image

        def work(progress: Progress) -> Listing:
            return list_image(image, self.find_image(image, progress), self.tmpdir_path, progress)

        return report(self, work, table)
