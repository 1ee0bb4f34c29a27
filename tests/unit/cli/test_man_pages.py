"""The man pages (docs/man/*.md) against the commands: every switch `cdisk X --help` shows is in cdisk-X(1) and
the other way round, so the two cannot drift; and each page has the sections an operator looks for."""

from __future__ import annotations

import re

import pytest

from tests.docs import COMMANDS, MAN, META, documented_switches, help_switches, page, section


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_man_page_documents_every_switch_the_help_shows_and_no_other(command: str) -> None:
    shown, documented = help_switches(command), documented_switches(command)
    if command:
        shown, documented = shown - META, documented - META
    name = f"cdisk-{command}(1)" if command else "cdisk(1)"
    help_command = f"cdisk {command} --help" if command else "cdisk --help"
    problems = []
    if missing := sorted(shown - documented):
        problems.append(f"{name} lacks {', '.join(missing)} (shown by `{help_command}`): add them to "
                        f"{page(command).relative_to(MAN.parent.parent)} under ## OPTIONS")
    if stale := sorted(documented - shown):
        problems.append(f"{name} documents {', '.join(stale)}, which `{help_command}` does not show")
    assert not problems, "; ".join(problems)


def test_every_command_has_a_page_and_every_page_a_command() -> None:
    pages = {p.name for p in MAN.glob("*.md")}
    assert pages == {"cdisk.1.md", *(f"cdisk-{c}.1.md" for c in COMMANDS)}


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_man_page_has_the_sections_operators_look_for(command: str) -> None:
    text = page(command).read_text()
    name = f"cdisk-{command}" if command else "cdisk"
    assert text.startswith(f"% {name} 1\n")
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert section(text, title).strip(), title
    assert section(text, "NAME").strip().startswith(f"{name} - ")


def test_cdisk_1_names_every_exit_code_and_environment_variable() -> None:
    text = page().read_text()
    codes = set(re.findall(r"^\*\*(\d+)\*\*$", section(text, "EXIT STATUS"), re.MULTILINE))
    assert codes >= {str(n) for n in range(10)}
    environment = section(text, "ENVIRONMENT")
    for variable in ("CONTAINER_HOST", "DOCKER_HOST", "XDG_RUNTIME_DIR", "TMPDIR", "SOURCE_DATE_EPOCH",
                     "NOTIFY_SOCKET"):
        assert f"**{variable}**" in environment, variable


def test_cdisk_1_names_every_exit_code_core_errors_carries() -> None:
    from cdisk.core import errors

    carried = {cls.exit_code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.CdiskError)}
    carried |= {errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_DIFFERENT}
    documented = {int(c) for c in re.findall(r"^\*\*(\d+)\*\*$", section(page().read_text(), "EXIT STATUS"),
                                             re.MULTILINE)}
    assert carried <= documented, sorted(carried - documented)


def test_refresh_page_documents_its_files_and_json_keys() -> None:
    from dataclasses import fields

    from cdisk.core.commands.refresh import LOCK_SUFFIX, RECORD_SUFFIX, Record, RefreshResult

    text = page("refresh").read_text()
    files = section(text, "FILES")
    assert f"*TARGET*{RECORD_SUFFIX}" in files and f".*TARGET*{LOCK_SUFFIX}" in files
    assert "stays after every refresh" in files
    for field in fields(Record):
        assert f"**{field.name}**" in files, f"record field {field.name}"
    output = section(text, "OUTPUT")
    for field in fields(RefreshResult):
        assert f'"{field.name}"' in output, f"--json key {field.name}"
    assert "SYSTEMD" in text and "cdisk-refresh@.timer" in section(text, "SYSTEMD")
