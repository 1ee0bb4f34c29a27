"""What the documentation tests read: the switches `cdisk X --help` shows, and those a man page documents."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import cdisk

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "docs" / "man"
COMMANDS = ("convert", "ls", "verify", "refresh", "serve", "build")
# Switches plumbum gives every command: documented once, in cdisk(1), not on each command's page.
META = frozenset({"-h", "--help", "--help-all", "--version", "--completions"})

_NAME = r"--?[A-Za-z0-9][\w-]*"
# A switch line of the help: indented, starting with its names (`-O, --output-format FORMAT  text`, or plumbum's
# own `-O, --output-format VALUE:str  text`), each name followed by a comma, a space, `=` or the line's end — so
# that a wrapped help text starting with `--output)` is no switch line.
_HELP_LINE = re.compile(rf"^ {{1,8}}((?:{_NAME}(?=[,\s=]|$),?\s?)+)")


def help_switches(command: str = "") -> set[str]:
    """The switch names `cdisk [COMMAND] --help` shows."""
    result = cdisk(*([command] if command else []), "--help")
    assert result.code == 0, result.err
    names: set[str] = set()
    for line in result.out.splitlines():
        if match := _HELP_LINE.match(line):
            names.update(re.findall(_NAME, match[1]))
    return names


def page(command: str = "") -> Path:
    """The man page source of `cdisk [COMMAND]`."""
    return MAN / (f"cdisk-{command}.1.md" if command else "cdisk.1.md")


def section(text: str, title: str) -> str:
    """The body of the `## TITLE` section of a man page source."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no ## {title} section"
    return match[1]


def documented_switches(command: str = "") -> set[str]:
    """The switch names the OPTIONS section of the man page of `cdisk [COMMAND]` documents (its `####` lines)."""
    options = section(page(command).read_text(), "OPTIONS")
    names: set[str] = set()
    for line in options.splitlines():
        if line.startswith("#### "):
            names.update(re.findall(rf"(?<![\w-])({_NAME})", line.replace("*", " ")))
    return names
