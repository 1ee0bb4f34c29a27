"""What reaches the terminal: every character of a name a terminal would act on, shown as an escape."""

from __future__ import annotations

import io
import re
from typing import cast

import pytest

from cdisk.cli.output import OutputSwitches, RichProgress, printable, progress_for


@pytest.mark.parametrize(("name", "shown"), [
    ("disk/vm.img", "disk/vm.img"),
    ("ü [red] é", "ü [red] é"),
    ("a\x1b]0;t\x07b", "a\\x1b]0;t\\x07b"),
    ("a\nb\rc\x7f", "a\\x0ab\\x0dc\\x7f"),
    ("a\x9b2J", "a\\x9b2J"),
    ("a\u202eb\u200bc\u2028d", "a\\u202eb\\u200bc\\u2028d"),
    ("a\udc9b[2J", "a\\x9b[2J"),  # an undecodable byte 0x9b (a CSI), kept as a surrogate: shown as that byte
])
def test_printable(name: str, shown: str) -> None:
    assert printable(name) == shown
    assert printable(name).encode("utf-8")  # and it can always be written out


class _Switches:
    """What progress_for reads of a command's switches."""

    def __init__(self, quiet: bool = False, verbose: bool = False, as_json: bool = False) -> None:
        self.quiet, self.verbose, self.as_json = quiet, verbose, as_json

    def is_verbose(self) -> bool:
        return self.verbose


def _run(switches: _Switches) -> None:
    with progress_for(cast(OutputSwitches, switches)) as progress:
        progress.stage("converting")
        for done in range(0, 101, 5):
            progress.update(done, 100)
        progress.warn("the registry did not answer: \x1b[2J")


def test_off_a_terminal_only_warnings_show_without_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    _run(_Switches())
    assert capsys.readouterr() == ("", "cdisk: warning: the registry did not answer: \\x1b[2J\n")
    _run(_Switches(as_json=True))
    assert capsys.readouterr() == ("", "cdisk: warning: the registry did not answer: \\x1b[2J\n")


def test_off_a_terminal_verbose_shows_steps_and_tenths(capsys: pytest.CaptureFixture[str]) -> None:
    _run(_Switches(verbose=True))
    err = capsys.readouterr().err.splitlines()
    assert err == ["cdisk: converting", *(f"cdisk: {n}%" for n in range(0, 101, 10)),
                   "cdisk: warning: the registry did not answer: \\x1b[2J"]


def test_quiet_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_for(cast(OutputSwitches, _Switches(quiet=True, verbose=True))) as progress:
        progress.stage("converting")
        progress.update(1, 1)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_a_step_and_a_warning_carry_no_time_and_no_source_location() -> None:
    from rich.console import Console

    written = io.StringIO()
    with RichProgress(verbose=True, console=Console(file=written, force_terminal=True, width=40)) as bar:
        bar.stage("pulling quay.io/containerdisks/fedora:40 from a registry far away")
        bar.warn("the registry did not answer")
    written = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", written.getvalue())
    # One line each (a terminal narrower than the line wraps it; rich does not), no time, no file:line.
    assert "cdisk: pulling quay.io/containerdisks/fedora:40 from a registry far away\n" in written
    assert "cdisk: warning: the registry did not answer\n" in written
    assert "output.py" not in written and not re.search(r"\d\d:\d\d:\d\d", written)
