"""The command line as plumbum parses it for cdisk: every usage error is one `UsageError` line (exit 2) with
nothing on stdout, told in cdisk's words whatever the locale; `-v` is --verbose everywhere; `--tls-verify`
alone means true; `--version` is the top level's.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from plumbum import cli

from cdisk.cli.app import CDisk, main
from cdisk.cli.convert import Convert
from cdisk.cli.help import Command
from cdisk.core import signals
from cdisk.core.errors import UsageError


def refused(*argv: str, app: type[cli.Application] = CDisk) -> str:
    with pytest.raises(UsageError) as raised:
        app.run([app.PROGNAME or "cdisk", *argv], exit=False)
    assert raised.value.exit_code == 2
    return raised.value.message


@pytest.mark.parametrize(("argv", "message"), [
    (["ls", "--method", "x", "IMG"],
     "--method 'x': not one of auto, mount, save, layers; see `cdisk ls --help`"),
    (["ls", "--method=x", "IMG"], "--method 'x': not one of auto, mount, save, layers; see `cdisk ls --help`"),
    (["ls", "--methd", "save", "IMG"], "unknown switch --methd; see `cdisk ls --help`"),
    (["convert", "-x", "IMG", "T"], "unknown switch -x; see `cdisk convert --help`"),
    (["-q", "convert", "IMG", "T"],
     "unknown switch -q before the command; a command's switches go after it: cdisk convert -q …"),
    (["convert", "IMG"], "TARGET missing; usage: cdisk convert [SWITCHES] IMAGE TARGET"),
    (["convert"], "IMAGE and TARGET missing; usage: cdisk convert [SWITCHES] IMAGE TARGET"),
    (["verify", "IMG", "T", "more"], "too many arguments: 'more'; usage: cdisk verify [SWITCHES] IMAGE [TARGET]"),
    # qemu-img's habit `-f qcow2` meets cdisk's -f (--force): the left-over argument is told with the slip.
    (["convert", "-f", "qcow2", "IMG", "T"],
     "too many arguments: 'T'; cdisk's -f is --force, not qemu-img's -f FMT (the disk's own format is read from the "
     "image; the output format is -O FMT): drop -f qcow2"),
    (["convert", "-f", "IMG", "T", "U"], "too many arguments: 'U'; usage: cdisk convert [SWITCHES] IMAGE TARGET"),
    (["convert", "IMG", "T", "--pull"], "--pull needs a value; see `cdisk convert --help`"),
    (["convert", "--force", "-f", "IMG", "T"], "--force given twice; give it once"),
    (["convert", "--quiet=yes", "IMG", "T"], "--quiet takes no value; see `cdisk convert --help`"),
    (["convert", "--target-is-zero", "IMG", "T"], "--target-is-zero needs --force; see `cdisk convert --help`"),
    (["refresh", "--keep", "100", "IMG", "T"], "--keep '100': not a number from 0 to 99; see `cdisk refresh --help`"),
    (["convert", "--tmpdir", "/nonexistent/dir", "IMG", "T"],
     "--tmpdir '/nonexistent/dir': not an existing directory; see `cdisk convert --help`"),
    (["convert", "--tls-verify=maybe", "IMG", "T"],
     "--tls-verify 'maybe': not one of true, false; see `cdisk convert --help`"),
    (["convert", "--version"], "unknown switch --version; see `cdisk convert --help`"),
    (["convert", "--help-all"], "unknown switch --help-all; see `cdisk convert --help`"),
    (["copy", "IMG", "T"], "unknown command 'copy'; the commands are convert, ls, verify, refresh, serve, build; "
                           "see `cdisk --help`"),
    ([], "no command given; give one of convert, ls, verify, refresh, serve, build; see `cdisk --help`"),
    (["-v"], "no command given; give one of convert, ls, verify, refresh, serve, build; see `cdisk --help`"),
    (["--bogus", "convert"], "unknown switch --bogus; see `cdisk --help`"),
])
def test_a_usage_error_is_one_line_of_cdisk(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(*argv) == message
    assert capsys.readouterr().out == ""


class _Strict(Command):
    PROGNAME = "strict"
    level = cli.SwitchAttr(["--level"], str, mandatory=True, argname="N")
    loud = cli.Flag(["--loud"], excludes=["--soft"])
    soft = cli.Flag(["--soft"])

    def main(self) -> None:
        pass


def test_required_and_exclusive_switches(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(app=_Strict) == "--level is required; see `strict --help`"
    assert refused("--level", "1", "--loud", "--soft", app=_Strict) == \
        "--loud and --soft exclude each other; give one of them"
    assert capsys.readouterr().out == ""


def test_a_german_locale_changes_no_word(monkeypatch: pytest.MonkeyPatch) -> None:
    """plumbum's messages are translated; cdisk's are told from what plumbum parsed, never from its words."""
    import plumbum.cli.application as application

    monkeypatch.setattr(application, "T_", lambda text: "Unbekannt: " + text.replace("Unknown", "Unbekannter"))
    assert refused("ls", "--bogus", "IMG") == "unknown switch --bogus; see `cdisk ls --help`"


class _Recorded(Convert):
    """convert's switches, parsed and recorded instead of converting."""

    seen: ClassVar[list[object]] = []

    def main(self, image: str, target: str) -> int:
        self.seen.append((self.image_request(image).tls_verify, image, target, self.is_verbose()))
        return 0


@pytest.mark.parametrize(("argv", "tls"), [
    (["--tls-verify", "IMG", "T"], True),
    (["IMG", "T", "--tls-verify"], True),
    (["--tls-verify=false", "IMG", "T"], False),
    (["--tls-verify", "false", "IMG", "T"], False),
    (["--tls-verify", "true", "IMG", "T"], True),
    (["IMG", "T"], None),
    (["--path", "--tls-verify", "IMG", "T"], None),  # --path's value, not a switch
])
def test_tls_verify_alone_means_true(argv: list[str], tls: bool | None) -> None:
    _Recorded.seen.clear()
    _, code = _Recorded.run(["cdisk convert", *argv], exit=False)
    assert code == 0 and _Recorded.seen == [(tls, "IMG", "T", False)]


def test_everything_after_a_double_dash_is_an_argument() -> None:
    assert Convert("cdisk convert").normalised(["--", "--tls-verify", "T"]) == ["--", "--tls-verify", "T"]


class _Top(CDisk):
    """cdisk, its convert recorded."""


_Top.subcommand("convert", _Recorded)


def test_v_before_the_command_is_verbose_not_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    _Recorded.seen.clear()
    _, code = _Top.run(["cdisk", "-v", "convert", "IMG", "T"], exit=False)
    assert code == 0 and _Recorded.seen == [(None, "IMG", "T", True)]
    assert "0.1.0" not in capsys.readouterr().out


def test_version_alone(capsys: pytest.CaptureFixture[str]) -> None:
    import cdisk

    _, code = CDisk.run(["cdisk", "--version"], exit=False)
    assert code == 0 and capsys.readouterr().out == f"cdisk {cdisk.__version__}\n"


def test_main_prints_one_line_on_stderr_and_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "stop_on_signals", lambda: None)  # pytest's own handlers stay
    with pytest.raises(SystemExit) as stopped:
        main(["cdisk", "convert", "--method", "x", "IMG", str(tmp_path / "t.raw")])
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "cdisk: error: --method 'x': not one of auto, mount, save, layers; see `cdisk convert --help`\n"
