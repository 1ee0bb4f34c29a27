"""Every error and exit code lives in core/errors.py, and each is the one the README documents."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from cdisk.core import errors

REPO = Path(__file__).resolve().parents[2]


def documented_codes() -> set[int]:
    section = (REPO / "README.md").read_text().split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    codes: set[int] = set()
    for cell in re.findall(r"^\| ([0-9 /]+) \|", section, re.MULTILINE):
        codes.update(int(code) for code in cell.split("/"))
    return codes


def test_every_code_cdisk_can_exit_with_is_documented_and_every_documented_one_exists() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.CdiskError)]
    codes = {c.exit_code for c in classes if isinstance(c.exit_code, int)}
    codes |= {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    codes |= {129, 130, 143}  # errors.Interrupted: 128 + SIGHUP / SIGINT / SIGTERM
    assert codes == documented_codes()


def test_no_module_but_errors_defines_an_error_class_or_an_exit_code() -> None:
    offenders = []
    for path in [*REPO.joinpath("core").rglob("*.py"), *REPO.joinpath("cli").rglob("*.py")]:
        if path.name == "errors.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(class \w+\((\w+\.)?\w*(Error|Exception|Refused|Exceeded|Crashed|Unavailable)\b"
                        r"|EXIT_\w+ = |\s*exit_code = )", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
