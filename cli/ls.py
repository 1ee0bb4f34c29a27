"""`cdisk ls IMAGE`: what an image holds, without converting."""

from __future__ import annotations

import io
import re
import sys
from typing import TYPE_CHECKING

from cdisk.cli.output import LaidOut, printable, report
from cdisk.cli.switches import DiskSwitches
from cdisk.core.progress import Progress
from cdisk.core.sizes import size_text

if TYPE_CHECKING:
    from cdisk.core.commands.ls import Listing

# Off a terminal nothing is fitted, nothing wraps: one row a line, however long, for grep and logs.
SHORT_DIGEST = 12
HEADER_ONLY_MARK = "*"
NOT_JUDGED_MARK = "?"
COLUMNS = ("path", "format", "virtual size", "file size", "layer", "offset", "refused because")
# Columns a narrow terminal goes without (`--json` has them), and a listing read in place has not (a file there
# is no byte range of a layer tar).
NARROW_DROPS = ("layer", "offset")
# Between two columns: a one-cell separator and one cell of padding on either side.
GAP = 3
# Where a name may be folded onto the next line: before each component of a path, before an image reference's
# tag or digest; never inside a component.
_PATH_BREAKS = re.compile(r"[/:@]?[^/:@]*")


def _short(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}:{hex_digest[:SHORT_DIGEST]}" if hex_digest else digest or "-"


def _pieces(name: str) -> list[str]:
    """`name` cut where it may be folded: `/image`, `/podvm.qcow2`; `quay.io`, `/containerdisks`, `/fedora`, `:40`."""
    return [piece for piece in _PATH_BREAKS.findall(name) if piece]


def _fold(name: str, width: int) -> str:
    """`name` on lines of at most `width` cells, broken only between its pieces (`_pieces`); a piece wider than
    `width` on its own is cut, as nothing else would show it whole."""
    from rich.cells import cell_len

    lines = [""]
    for piece in _pieces(name):
        if lines[-1] and cell_len(lines[-1]) + cell_len(piece) > width:
            lines.append("")
        lines[-1] += piece
    folded = []
    for line in lines:
        while cell_len(line) > width:
            cut = width
            while cell_len(line[:cut]) > width:
                cut -= 1
            folded.append(line[:max(cut, 1)])
            line = line[max(cut, 1):]
        folded.append(line)
    return "\n".join(folded)


def _fit(rows: list[dict[str, str]], columns: tuple[str, ...], width: int) -> dict[str, int | None]:
    """The columns shown in `width` cells, each with its width: None lets a column take what it needs.

    Every column but the path and the refusal keeps its full width (so no header wraps). The path takes what it
    needs, leaving the refusal at least its header's width (the refusal wraps at spaces); a narrow path folds
    between the pieces of a name (`_pieces`), and keeps its longest piece whole as long as the refusal keeps a
    word's width; inside a piece only when the terminal cannot hold even that. A terminal too narrow for the
    path's longest piece goes without the layer and offset columns first.
    """
    from rich.cells import cell_len

    def need(column: str) -> int:
        return max([cell_len(column), *(cell_len(row[column]) for row in rows)])

    path_min = max([cell_len("path"), *(cell_len(piece) for row in rows for piece in _pieces(row["path"]))])
    path, refused = need("path"), need("refused because")
    refused_min = min(refused, cell_len("refused because"))
    shown = list(columns)

    def room() -> int:
        fixed = [c for c in shown if c not in ("path", "refused because")]
        return width - sum(map(need, fixed)) - GAP * (len(shown) - 1)

    if room() < min(path_min + refused_min, path + refused):
        shown = [c for c in shown if c not in NARROW_DROPS]
    widths: dict[str, int | None] = dict.fromkeys(shown)
    left = room()
    if path + refused > left:
        # The refusal's header may go on two lines ("refused", "because") before a name is cut inside a piece;
        # a terminal narrower still cuts the longest pieces, rather than make rich squeeze every column.
        floor = min(refused, cell_len("because"))
        path_width = min(path, max(path_min, left - refused_min), left - floor)
        path_width = max(cell_len("path"), path_width)
        widths["path"], widths["refused because"] = path_width, max(floor, min(refused, left - path_width))
    return widths


def _header(fields: list[str], width: int | None) -> list[str]:
    """The image's line: its fields apart by two spaces, on as many lines as `width` needs, a line broken only
    between two fields (or, for a name wider than the terminal, between its pieces); off a terminal, one line."""
    if width is None:
        return ["  ".join(fields)]
    lines: list[str] = []
    for field in fields:
        if lines and len(lines[-1]) + 2 + len(field) <= width:
            lines[-1] += "  " + field
        else:
            lines.extend(_fold(field, width).split("\n"))
    return lines


def _pasted(listing: Listing) -> list[str]:
    """For each find of the search convert may read whose path, as the table shows it, would not paste as itself
    (a space, a quote, `$(…)`, an escape shown for a newline): the --path to pass, as one shell word."""
    from cdisk.core.commands.ls import FOUND_BY_SEARCH
    from cdisk.core.disk.candidates import FOUND_SHOWN
    from cdisk.core.shell import shell_word

    words = [shell_word(disk.path) for disk in listing.disks
             if disk.found_by == FOUND_BY_SEARCH and not disk.refused and shell_word(disk.path) != printable(disk.path)]
    more = [f"  … {len(words) - FOUND_SHOWN} more: see `cdisk ls --json`"] if len(words) > FOUND_SHOWN else []
    return [f"  --path {word}" for word in words[:FOUND_SHOWN]] + more


def table(listing: Listing, width: int | None = None) -> str:
    """The listing as a table fitted to `width` columns, or to the terminal's; plain text off a terminal.

    No name is broken inside a component: a path folds only before a `/`, the image's name before a `/`, `:` or
    `@`; the refusal wraps at spaces; every other column keeps its width, so no header is ever broken. Off a
    terminal nothing wraps at all. Layer digests are shortened and listed once, under the table; a narrow
    terminal goes without the layer and offset columns, and so does a listing read in place (no offsets).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cdisk.core.commands.ls import BY_HEADER, BY_NOTHING, FOUND_BY_SEARCH, QEMU_IMG_JUDGED
    from cdisk.core.disk.wanted import COPIES

    rows: list[dict[str, str]] = []
    layers: dict[int, str] = {}
    header_only = not_judged = False
    for disk in listing.disks:
        fmt = disk.format or "-"
        if disk.format and not disk.refused and disk.judged_by == BY_HEADER:
            fmt += HEADER_ONLY_MARK
            header_only = True
        if disk.judged_by == BY_NOTHING:  # the format a search's header told, if any
            fmt, not_judged = (disk.format or "") + NOT_JUDGED_MARK, True
        if disk.layer is not None:
            layers[disk.layer] = _short(disk.layer_digest or "")
        rows.append(dict(zip(COLUMNS, (
            printable(disk.path), printable(fmt), size_text(disk.virtual_size), size_text(disk.file_size),
            "-" if disk.layer is None else str(disk.layer), "-" if disk.offset is None else str(disk.offset),
            printable(disk.refused)), strict=True)))
    at_offsets = any(disk.offset is not None or disk.layer is not None for disk in listing.disks)
    columns = COLUMNS if at_offsets else tuple(c for c in COLUMNS if c not in NARROW_DROPS)
    if width is None and sys.stdout.isatty():
        from rich.console import Console as Terminal

        width = Terminal().width
    if width is None:
        grid = Table(box=None, pad_edge=False)
        widths: dict[str, int | None] = dict.fromkeys(columns)
    else:
        grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        widths = _fit(rows, columns, width)
    for column, fixed_width in widths.items():
        wraps = column == "refused because" and width is not None
        grid.add_column(column, width=fixed_width, no_wrap=not wraps, overflow="fold" if wraps else "ignore",
                        justify="left" if column in ("path", "refused because", "format") else "right")
    for row in rows:
        path_width = widths.get("path")
        cells = {**row, "path": _fold(row["path"], path_width) if path_width else row["path"]}
        grid.add_row(*(cells[column] for column in widths))
    fields = [printable(listing.image), f"id {listing.image_id[:SHORT_DIGEST]}", f"digest {_short(listing.digest)}",
              f"arch {printable(listing.architecture) or '-'}", f"source {printable(listing.source)}",
              f"method {listing.method}"]
    lines = _header(fields, width)
    out = io.StringIO()
    # No colour codes: the text is printed again by `report`, which would count them as characters. Off a
    # terminal, a console as wide as the widest row could be: nothing wraps.
    plain = sum(len(c) for row in rows for c in row.values()) + sum(map(len, COLUMNS)) + GAP * len(COLUMNS)
    console = Console(file=out, width=width or max(80, plain), force_terminal=False, no_color=True,
                      highlight=False, emoji=False, markup=False)
    console.print(grid)
    lines += out.getvalue().rstrip("\n").splitlines()
    if at_offsets and "layer" not in widths:
        lines.append("layer and offset: see `cdisk ls --json`, or a wider terminal")
    elif layers:
        listed = ", ".join(f"{index} {digest}" for index, digest in sorted(layers.items()))
        lines.append(printable(f"layers: {listed}"))
    if header_only:
        lines.append(f"{HEADER_ONLY_MARK} judged by header only: qemu-img judges the first {QEMU_IMG_JUDGED} "
                     "distinct disks of plain layers; convert checks the whole disk")
    if not_judged:
        lines.append(f"{NOT_JUDGED_MARK} not judged: cdisk copies at most {COPIES} candidates out of compressed "
                     "layers; convert --path reads any of them")
    if any(disk.found_by == FOUND_BY_SEARCH for disk in listing.disks):
        lines.append("found outside /disk/ by their headers: convert takes none of them without --path")
        lines += _pasted(listing)
    lines += [f"note: {printable(problem)}" for problem in listing.problems]
    return LaidOut("\n".join(line.rstrip() for line in lines))


class Ls(DiskSwitches):
    """List the candidate disks of IMAGE (directly under /disk/, else the disk-like files elsewhere, or the one
    --path names): path, format, sizes, layer and offset where it is read at one, and what would be refused."""

    def main(self, image: str) -> int:
        from cdisk.core.commands.ls import list_image

        def work(progress: Progress) -> Listing:
            return list_image(self.image_request(image), self.read_request(), progress)

        return report(self, work, table)
