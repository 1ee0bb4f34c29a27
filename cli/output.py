"""Terminal output: progress, the result, and errors, each as a terminal, a log or a program wants it."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from plumbum import cli

from cdisk.cli.help import Command
from cdisk.core.errors import EXIT_INTERNAL, EXIT_OK, CdiskError, Interrupted, ToolError
from cdisk.core.progress import NoProgress, Progress

if TYPE_CHECKING:
    from cdisk.core.diagnostics import Diagnostics

# Characters a terminal acts on or that change how a line reads, besides the C0/C1 controls and DEL (category
# Cc): bidi overrides, zero-width and other format characters (Cf), the Unicode line and paragraph separators;
# and the lone surrogates a name's undecodable bytes become (Cs), shown as those bytes (0x9b is a CSI).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """`text` with every character a terminal would act on shown as an escape (\\x1b, \\u202e): what an image
    names (a file, an annotation, an architecture) can neither move the cursor, set the title, clear the screen,
    reverse the line nor start a line of its own."""
    import unicodedata

    if text.isprintable():
        return text
    return "".join(_escaped(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte: shown as that byte
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class LaidOut(str):
    """Text already laid out in lines (a table), each of them printable already. `report` prints it as it is:
    through rich on a terminal, as rich text (rich would read `[...]` in an image's file names as markup)."""

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(str(self))


class OutputSwitches(Command):
    """Switches every command shares."""

    quiet = cli.Flag(["-q", "--quiet"], help="Print nothing but errors: no progress, no warnings, no result line")
    as_json = cli.Flag(["--json"], help="Print the result as one JSON object on stdout")
    verbose = cli.Flag(["-v", "--verbose"], help="Say what is done at each step (off a terminal: with the "
                                                 "progress every 10 %)")
    debug = cli.Flag(["--debug"], help="Show a traceback with errors")

    def is_verbose(self) -> bool:
        """--verbose, given to this command or before it (`cdisk -v convert …`)."""
        return bool(self.verbose) or bool(getattr(self.parent, "verbose", False))


# A command's version is cdisk's: `cdisk --version` alone says it (plumbum gives every command a --version).
OutputSwitches.unbind_switches("--version")


WARNING = "cdisk: warning:"


class LineProgress:
    """Progress as plain log lines on stderr (journald-friendly). With `steps`, one line per step and one per
    10 %; without, only warnings — as qemu-img says nothing but errors without -p."""

    def __init__(self, steps: bool = True) -> None:
        self._decile = -1
        self._steps = steps

    def stage(self, name: str) -> None:
        self._decile = -1
        if self._steps:
            print(f"cdisk: {printable(name)}", file=sys.stderr, flush=True)

    def update(self, done: float, total: float) -> None:
        decile = int(10 * done / total) if total else 0
        if decile > self._decile:
            self._decile = decile
            if self._steps:
                print(f"cdisk: {10 * decile}%", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"{WARNING} {printable(message)}", file=sys.stderr, flush=True)


class RichProgress:
    """A rich progress bar on the terminal's stderr, one bar per step; the steps (with `verbose`) and warnings
    printed above it as plain lines (no time, no source location)."""

    def __init__(self, verbose: bool, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                             TimeRemainingColumn(), console=console or Console(stderr=True), transient=True)
        self._task: Any = None
        self._verbose = verbose

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def _line(self, *parts: str | tuple[str, str]) -> None:
        from rich.text import Text

        self._bar.console.print(Text.assemble(*parts), soft_wrap=True, highlight=False, emoji=False)

    def stage(self, name: str) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        name = printable(name)
        if self._verbose:
            self._line(f"cdisk: {name}")
        self._task = self._bar.add_task(name, total=None)

    def update(self, done: float, total: float) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=done, total=total)

    def warn(self, message: str) -> None:
        self._line((WARNING, "bold yellow"), " ", printable(message))


@contextmanager
def progress_for(switches: OutputSwitches) -> Iterator[Progress]:
    """The progress display that suits where output goes: a bar on a terminal; off one, the steps only with
    --verbose (warnings always); nothing at all with --quiet."""
    if switches.quiet:
        yield NoProgress()
    elif sys.stderr.isatty():
        with RichProgress(switches.is_verbose()) as bar:
            yield bar
    else:
        yield LineProgress(steps=switches.is_verbose())


def error_line(message: str) -> None:
    """One line on stderr: red on a terminal."""
    message = printable(message)
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.text import Text

        # Text, not markup: a message quotes names from the image, and `[/x]` in one must print as it is.
        Console(stderr=True, highlight=False).print(Text.assemble(("cdisk: error:", "bold red"), " ", message),
                                                     soft_wrap=True, emoji=False)
    else:
        print(f"cdisk: error: {message}", file=sys.stderr, flush=True)


def failed(switches: OutputSwitches, error: Exception) -> int:
    """The one place where an error becomes one clear line (with --debug, the traceback and the tool's own
    words too); its exit code."""
    if switches.debug:
        # Line by line through `printable`: a traceback and a tool's words may quote what an image names.
        for line in traceback.format_exc().splitlines():
            print(printable(line), file=sys.stderr)
        if isinstance(error, ToolError) and error.stderr:
            # The tool's own words (a child's traceback, qemu-img's whole complaint), not just its last line.
            print(printable(f"{' '.join(error.argv)} said:"), file=sys.stderr)
            for line in error.stderr.rstrip().splitlines():
                print(printable(line), file=sys.stderr)
    if isinstance(error, CdiskError):
        error_line(error.message)
        return error.exit_code
    error_line(f"unexpected {type(error).__name__}: {error} (run with --debug for details, and report it)")
    return EXIT_INTERNAL


def report(switches: OutputSwitches, work: Callable[[Progress], Any], summary: Callable[[Any], str],
           exit_code: Callable[[Any], int] = lambda _: EXIT_OK) -> int:
    """Run `work` with progress, print its result as the switches ask, and map errors to exit codes.

    `summary` renders the result for a person; `exit_code` says what a result means to a script.
    """
    try:
        with progress_for(switches) as progress:
            result = work(progress)
    except Interrupted as stop:
        error_line("interrupted; nothing was left behind")
        return stop.exit_code
    except Exception as error:
        return failed(switches, error)
    if switches.as_json:
        print(json.dumps(asdict(result)), flush=True)
    elif not switches.quiet:
        text = summary(result)
        if not isinstance(text, LaidOut):
            text = printable(text)  # a summary is one line; any line break in it is a name's
        if sys.stdout.isatty():
            from rich.console import Console

            # soft_wrap: a line longer than the terminal is wrapped by the terminal, never broken by rich, so
            # that it copies and pastes whole.
            Console(highlight=False).print(text, markup=False, emoji=False, soft_wrap=True)
        else:
            print(text, flush=True)
    return exit_code(result)


def diagnostics_lines(found: Diagnostics) -> list[str]:
    """What `cdisk --version --verbose` adds to the version: each tool's version or why there is none, and
    whether qemu-img runs in a sandbox here (what a bug report needs)."""
    lines = [printable(f"system: {found.system}"), f"python: {found.python}"]
    for tool in found.tools:
        said = tool.version if tool.version is not None else tool.note
        extra = f" ({tool.note})" if tool.version is not None and tool.note else ""
        lines.append(printable(f"{tool.name}: {said}{extra}"))
    lines.append(printable(f"sandbox: {'works' if found.sandbox is None else 'none: ' + found.sandbox}"))
    return lines
