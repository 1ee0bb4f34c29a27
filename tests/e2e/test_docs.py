"""The documentation as an operator meets it: a README that is a front page, man pages that `man` finds where
setup puts them and that groff renders without a warning, links that lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import COMMANDS, MAN, ROOT
from tests.helpers import tool_or_skip

README = ROOT / "README.md"


def test_readme_is_a_front_page_of_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the reference belongs in docs/man/"
    # its title, then the two commands: the demo and the test suite
    assert lines[0] == "# cdisk"
    first_block = README.read_text().split("```", 2)[1].splitlines()
    assert [line.split()[0] for line in first_block[1:] if line.strip()] == ["scripts/demo", "scripts/test"]
    assert lines[1] == "" and lines[2].startswith("```")


def test_readme_shows_one_example_of_every_command_and_links_its_man_page() -> None:
    text = README.read_text()
    for command in COMMANDS:
        assert re.search(rf"^    cdisk {command} ", text, re.MULTILINE), command
        assert f"(docs/man/cdisk-{command}.1.md)" in text, command


@pytest.mark.parametrize("document", [README, *sorted((ROOT / "docs").rglob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(document: Path) -> None:
    broken = [target for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", document.read_text())
              if "://" not in target and not (document.parent / target).exists()]
    assert broken == []


def test_ci_runs_the_readme_test_command_unchanged() -> None:
    assert (ROOT / ".ci" / "run").read_text().splitlines()[-1] == "exec scripts/test -p no:cacheprovider"


def test_man_pages_install_where_man_finds_them_from_path(tmp_path: Path) -> None:
    tool_or_skip("go-md2man")
    man = tool_or_skip("man")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # this venv's, by a wrapper: a symlink would lose its pyvenv.cfg
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "DESTDIR": str(tmp_path / "root"), "HOME": str(tmp_path), "XDG_DATA_HOME": ""}
    subprocess.run([str(ROOT / "scripts" / "install-docs"), str(venv)], check=True, env=env)
    pages = sorted(p.name for p in (venv / "share" / "man" / "man1").iterdir())
    assert pages == sorted(p.name.removesuffix(".md") for p in MAN.glob("*.md"))
    # man-db maps PATH's .../bin to .../share/man: no MANPATH needed
    lookup = {k: v for k, v in os.environ.items() if k != "MANPATH"}
    lookup["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    for name in ("cdisk", *(f"cdisk-{c}" for c in COMMANDS)):
        found = subprocess.run([man, "-w", name], capture_output=True, text=True, env=lookup, check=False)
        assert found.stdout.strip() == str(venv / "share" / "man" / "man1" / f"{name}.1"), found.stderr
    # completions: staged under DESTDIR where this user's shells look
    staged = sorted(str(p.relative_to(tmp_path / "root")) for p in (tmp_path / "root").rglob("*") if p.is_file())
    assert len(staged) == 3 and any(p.endswith("/_cdisk") for p in staged), staged
    # a second run changes nothing
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    subprocess.run([str(ROOT / "scripts" / "install-docs"), str(venv)], check=True, env=env)
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("page", sorted(MAN.glob("*.md")), ids=lambda p: p.name)
def test_man_page_renders_without_a_warning(page: Path) -> None:
    converter = tool_or_skip("go-md2man")
    groff = tool_or_skip("groff")
    roff = subprocess.run([converter, "-in", str(page)], capture_output=True, check=True).stdout
    rendered = subprocess.run([groff, "-k", "-man", "-Tutf8", "-ww", "-rLL=100n"], input=roff, capture_output=True,
                              check=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert rendered.stderr == b""
    text = re.sub(r".\x08", "", rendered.stdout.decode())  # no overstrike (bold, underline)
    assert "OPTIONS" in text and "SEE ALSO" in text
