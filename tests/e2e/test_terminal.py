"""What an operator at a terminal sees: text from the image or of cdisk's own is printed as it is, never read
as rich markup (a name holding `[/x]` once crashed the error line itself).
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.helpers import Images


def on_a_terminal(*args: str | Path) -> tuple[int, str]:
    """Run the real cdisk with stdout and stderr on a pseudo-terminal; its exit code and what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the last holder of the terminal is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.wait(timeout=120), seen.decode(errors="replace")


def test_a_bracketed_name_in_an_error_prints_as_it_is(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    code, seen = on_a_terminal("convert", "--path", "/disk/[/x]:smile:", name, tmp_path / "out.raw")
    assert code == 4, seen
    assert "error:\x1b[0m /disk/[/x]:smile:: /disk/[ does not exist in the image" in seen
    assert "Traceback" not in seen


def test_the_summary_keeps_its_method_in_brackets(images: Images, tmp_path: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    code, seen = on_a_terminal("convert", "--method", "save", name, tmp_path / "out.raw")
    assert code == 0, seen
    assert "[save]" in seen
