"""Each command's help, as cdisk renders it: a usage line naming the arguments, every switch once with its names
and metavar at the start of its line, sorted, defaults as an operator writes them, nothing of plumbum's types.
"""

from __future__ import annotations

import re

import pytest
from plumbum import cli

from cdisk.cli.app import CDisk
from cdisk.cli.build import Build
from cdisk.cli.convert import Convert
from cdisk.cli.help import Command, SwitchDoc, help_text, metavar, switch_docs, usage_lines
from cdisk.cli.ls import Ls
from cdisk.cli.refresh import Refresh
from cdisk.cli.serve import Serve
from cdisk.cli.verify import Verify

COMMANDS = {"convert": Convert, "ls": Ls, "verify": Verify, "refresh": Refresh, "serve": Serve, "build": Build}
# A switch's line: two spaces, then `-x, --long` or four more spaces and `--long`.
SWITCH_LINE = re.compile(r"^  (?:(-\w), |    )(--[\w-]+)")


def app(name: str) -> cli.Application:
    return COMMANDS[name](f"cdisk {name}")


def shown_switches(text: str) -> list[str]:
    return [m[2] for line in text.splitlines() if (m := SWITCH_LINE.match(line))]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_switch_is_listed_once_by_name_sorted(name: str) -> None:
    command = app(name)
    text = help_text(command, width=80)
    longs = shown_switches(text)
    assert longs == sorted(longs, key=lambda s: s.lstrip("-").lower())
    assert len(longs) == len(set(longs))
    # Every name plumbum takes for this command is on a switch line, and nothing else is.
    taken = {("-" if len(n) == 1 else "--") + n for n in command._switches_by_name}
    headings = [re.match(r" +(\S.*?)(?:  |$)", line)[1] for line in text.splitlines() if SWITCH_LINE.match(line)]
    listed = {name for heading in headings for name in re.findall(r"(?<![\w-])--?[\w-]+", heading)}
    assert listed == taken


@pytest.mark.parametrize("name", COMMANDS)
def test_no_help_line_leaks_plumbum(name: str) -> None:
    text = help_text(app(name), width=80)
    for leak in ("VALUE:", " VALUE ", "ExistingDirectory", "Range", "Set(", "the default is", "Meta-switches",
                 "--help-all", "--completions", "--version", "[image=", "_mode"):
        assert leak not in text, (leak, text)
    for line in text.splitlines():
        # Only a switch's own line starts with a dash: a wrapped help text never does.
        assert not line.lstrip().startswith("-") or SWITCH_LINE.match(line), line
        assert len(line) <= 80 or SWITCH_LINE.match(line), line


def test_refresh_lists_its_own_pull_and_force_only() -> None:
    text = help_text(app("refresh"), width=100)
    assert text.count("--pull") == 1 + text.count("podman's --pull")
    assert "{missing,always,never,newer}" in text
    assert "Replace a TARGET that no refresh wrote" in text
    assert "Replace an existing TARGET" not in text


def test_usage_lines_name_the_arguments() -> None:
    assert usage_lines(app("convert")) == ["cdisk convert [SWITCHES] IMAGE TARGET"]
    assert usage_lines(app("refresh")) == ["cdisk refresh [SWITCHES] IMAGE TARGET"]
    assert usage_lines(app("serve")) == ["cdisk serve [SWITCHES] IMAGE", "cdisk serve --stop SOCKET"]
    assert usage_lines(CDisk("cdisk")) == ["cdisk [SWITCHES] COMMAND [SWITCHES] ARGUMENTS",
                                           "cdisk --version [--verbose]"]
    assert help_text(app("serve"), width=80).startswith(
        "Usage: cdisk serve [SWITCHES] IMAGE\n       cdisk serve --stop SOCKET\n")


def test_defaults_and_metavars_read_as_an_operator_writes_them() -> None:
    serve = help_text(app("serve"), width=200)
    assert re.search(r"^      --socket-mode MODE +Who may connect .*0600 \(default\)", serve, re.MULTILINE)
    assert "384" not in serve
    convert = help_text(app("convert"), width=200)
    assert re.search(r"^  -O, --output-format FORMAT +Format of TARGET.*\(default: raw\)", convert, re.MULTILINE)
    assert re.search(r"^      --engine \{auto,podman,docker\}( |$)", convert, re.MULTILINE)
    # Temporary copies go beside TARGET for the commands that have one (verify too), never for ls or serve.
    for command in ("convert", "refresh", "verify"):
        assert re.search(r"^      --tmpdir DIR +.*beside a file TARGET", help_text(app(command), width=200),
                         re.MULTILINE), command
    for command in ("ls", "serve"):
        assert "beside a file TARGET" not in help_text(app(command), width=200), command
    assert re.search(r"^      --target-is-zero +.*\(with --force\)$", convert, re.MULTILINE)


@pytest.mark.parametrize("name", ["ls", "serve"])
def test_a_command_without_target_says_nothing_of_one_for_tmpdir(name: str) -> None:
    tmpdir = [doc for doc in switch_docs(app(name)) if doc.names == ("--tmpdir",)]
    assert len(tmpdir) == 1 and "TARGET" not in tmpdir[0].text and tmpdir[0].metavar == "DIR"


def test_the_top_level_help_names_every_source_and_command() -> None:
    text = help_text(CDisk("cdisk"), width=120)
    assert "from podman's or docker's cache, an image archive or an OCI layout" in text
    for command in COMMANDS:
        assert re.search(rf"^  {command} +\S", text, re.MULTILINE), command
    assert shown_switches(text) == ["--help", "--verbose", "--version"]
    assert re.search(r"^  -v, --verbose ", text, re.MULTILINE)


class _Sample(Command):
    level = cli.SwitchAttr(["--level"], cli.Set("low", "high"), default="low", help="How much")
    mode = cli.SwitchAttr(["-m", "--socket-mode"], str, default="600", help="A mode")
    named = cli.SwitchAttr(["--pid-file"], str, argname="FILE", help="Where (default: nowhere)")
    labels = cli.SwitchAttr(["--label"], str, list=True, help="A label")

    def main(self, disk: str, name: str = "") -> None:
        pass


def test_switch_docs_of_a_sample() -> None:
    docs = {doc.names[-1]: doc for doc in switch_docs(_Sample("sample"))}
    assert docs["--level"] == SwitchDoc(("--level",), "{low,high}", "How much (default: low)")
    assert docs["--socket-mode"] == SwitchDoc(("-m", "--socket-mode"), "MODE", "A mode (default: 600)")
    assert docs["--pid-file"] == SwitchDoc(("--pid-file",), "FILE", "Where (default: nowhere)")
    assert docs["--label"] == SwitchDoc(("--label",), "LABEL", "A label (repeatable)")
    assert docs["--socket-mode"].heading == "-m, --socket-mode MODE"
    assert docs["--level"].heading == "    --level {low,high}"
    assert usage_lines(_Sample("sample")) == ["sample [SWITCHES] DISK [NAME]"]


def test_a_flag_has_no_metavar() -> None:
    quiet = next(info for name, info in Convert("cdisk convert")._switches_by_name.items() if name == "quiet")
    assert metavar(quiet) == ""
