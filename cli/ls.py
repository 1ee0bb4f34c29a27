"""`cdisk ls IMAGE`: what an image holds, without converting."""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING

from cdisk.cli.output import LaidOut, printable, report
from cdisk.cli.switches import ImageSwitches, size_text
from cdisk.core.progress import Progress

if TYPE_CHECKING:
    from cdisk.core.commands.ls import Listing

# Off a terminal nothing is fitted: one row a line, for grep and logs.
PLAIN_WIDTH = 400
SHORT_DIGEST = 12
HEADER_ONLY_MARK = "*"
NOT_JUDGED_MARK = "?"
COLUMNS = ("path", "format", "virtual size", "file size", "layer", "offset", "refused because")
# Columns a narrow terminal goes without (`--json` has them): when the path and the refusal would get fewer
# cells than they need, and fewer than this many, the table would fold them into slivers.
NARROW_DROPS = ("layer", "offset")
SHARED_MIN = 40
# Between two columns: a one-cell separator and one cell of padding on either side.
GAP = 3


def _short(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}:{hex_digest[:SHORT_DIGEST]}" if hex_digest else digest or "-"


def _fit(rows: list[dict[str, str]], width: int) -> dict[str, int | None]:
    """The columns shown in `width` cells, each with its width: None lets a column take what it needs.

    Every column but the path and the refusal keeps its full width (so no header wraps); those two
    share what is left: the refusal at least half of it (or what it needs), the path the rest.
    """
    from rich.cells import cell_len

    def need(column: str) -> int:
        return max([cell_len(column), *(cell_len(row[column]) for row in rows)])

    shown = list(COLUMNS)
    fixed = [c for c in shown if c not in ("path", "refused because")]
    left = width - sum(map(need, fixed)) - GAP * (len(shown) - 1)
    if left < min(SHARED_MIN, need("path") + need("refused because")):
        shown = [c for c in shown if c not in NARROW_DROPS]
        left += sum(need(c) + GAP for c in NARROW_DROPS)
    widths: dict[str, int | None] = dict.fromkeys(shown)
    path, refused = need("path"), need("refused because")
    if path + refused > left and left >= cell_len("path") + cell_len("refused because"):
        refused_min = min(refused, max(cell_len("refused because"), left // 2))
        path_width = max(cell_len("path"), min(path, left - refused_min))
        widths["path"], widths["refused because"] = path_width, min(refused, left - path_width)
    return widths


def table(listing: Listing, width: int | None = None) -> str:
    """The listing as a table fitted to `width` columns, or to the terminal's; plain text off a terminal.

    Only the path and the refusal wrap, each within its own column; every other column keeps its
    width, so no header is ever broken. Layer digests are shortened and listed once, under the table;
    a narrow terminal goes without the layer and offset columns.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cdisk.core.commands.ls import BY_HEADER, BY_NOTHING, QEMU_IMG_JUDGED
    from cdisk.core.disk.wanted import COPIES

    rows: list[dict[str, str]] = []
    layers: dict[int, str] = {}
    header_only = not_judged = False
    for disk in listing.disks:
        fmt = disk.format or "-"
        if disk.format and not disk.refused and disk.judged_by == BY_HEADER:
            fmt += HEADER_ONLY_MARK
            header_only = True
        if disk.judged_by == BY_NOTHING:
            fmt, not_judged = NOT_JUDGED_MARK, True
        if disk.layer is not None:
            layers[disk.layer] = _short(disk.layer_digest or "")
        rows.append(dict(zip(COLUMNS, (
            printable(disk.path), printable(fmt), size_text(disk.virtual_size), size_text(disk.file_size),
            "-" if disk.layer is None else str(disk.layer), "-" if disk.offset is None else str(disk.offset),
            printable(disk.refused)), strict=True)))
    out = io.StringIO()
    # No colour codes: the text is printed again by `report`, which would count them as characters.
    console = Console(file=out, width=width or PLAIN_WIDTH, force_terminal=False, no_color=True,
                      highlight=False, emoji=False, markup=False)
    if width is None and sys.stdout.isatty():
        width = console.width = Console().width
    if width is None:
        grid = Table(box=None, pad_edge=False)
        widths: dict[str, int | None] = dict.fromkeys(COLUMNS)
    else:
        grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        widths = _fit(rows, width)
    for column, fixed_width in widths.items():
        wraps = column in ("path", "refused because")
        grid.add_column(column, width=fixed_width, no_wrap=not wraps, overflow="fold",
                        justify="left" if wraps or column == "format" else "right")
    for row in rows:
        grid.add_row(*(row[column] for column in widths))
    console.print(printable(f"{listing.image}  id {listing.id[:SHORT_DIGEST]}  digest {_short(listing.digest)}  "
                            f"arch {listing.architecture or '-'}  source {listing.source}"))
    console.print(grid)
    if "layer" not in widths:
        console.print("layer and offset: see `cdisk ls --json`, or a wider terminal")
    elif layers:
        listed = ", ".join(f"{index} {digest}" for index, digest in sorted(layers.items()))
        console.print(printable(f"layers: {listed}"))
    if header_only:
        console.print(f"{HEADER_ONLY_MARK} judged by header only: qemu-img judges the first {QEMU_IMG_JUDGED} "
                      "distinct disks of plain layers; convert checks the whole disk")
    if not_judged:
        console.print(f"{NOT_JUDGED_MARK} not judged: cdisk copies at most {COPIES} candidates out of compressed "
                      "layers; convert --path reads any of them")
    for problem in listing.problems:
        console.print(f"note: {printable(problem)}")
    return LaidOut("\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines()))


class Ls(ImageSwitches):
    """List the candidate disks of IMAGE: path, format, sizes, layer and offset, and what would be refused."""

    def main(self, image: str) -> int:
        from cdisk.core.commands.ls import list_image

        def work(progress: Progress) -> Listing:
            return list_image(self.image_request(image), self.read_request(), progress)

        return report(self, work, table)
