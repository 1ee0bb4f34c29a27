"""What an operator at a terminal sees: text from the image or of cdisk's own is printed as it is, never read
as rich markup (a name holding `[/x]` once crashed the error line itself); and what an image names reaches
the terminal escaped: a file name, an annotation or an architecture can neither drive the terminal (ESC, BEL,
CSI as C1) nor reverse a line (U+202E) nor start a line of its own.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Images, cdisk
from tests.images import Entry, layer_tar, oci_artifact_layout, oci_layout


def on_a_terminal(*args: str | Path, columns: int = 200) -> tuple[int, str]:
    """Run the real cdisk with stdout and stderr on a pseudo-terminal; its exit code and what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cdisk", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": str(columns)})
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


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b2J\u202e\nFAKE: cdisk: done\r"
SHOWN = "\\x1b]0;owned\\x07\\x1b[2J\\x9b2J\\u202e\\x0aFAKE: cdisk: done\\x0d"
# What an error that names it to pass as --path shows: one shell word of its bytes, pasted as the very name.
PASTED = "$'/disk/\\x1b]0;owned\\x07\\x1b[2J\\xc2\\x9b2J\\xe2\\x80\\xae\\x0aFAKE: cdisk: done\\x0d'"


def _clean(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e\r"), repr(text)


@pytest.mark.needs("qemu-img", "bwrap")
def test_a_file_name_is_escaped_in_errors_and_in_ls(tmp_path: Path) -> None:
    disk = b"\0" * 4096
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/a.img", disk), Entry(f"disk/{HOSTILE}", disk)])])
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 4 and result.err.count("\n") == 1, result.err
    _clean(result.err)
    assert PASTED in result.err
    listed = cdisk("ls", f"oci:{layout}")
    assert listed.code == 0, listed.err
    _clean(listed.out)
    assert SHOWN in listed.out and "FAKE" not in listed.out.replace(SHOWN, "")
    # JSON says it as it is: a program reads the name, a terminal never sees it raw.
    names = [d["path"] for d in json.loads(cdisk("ls", "--json", f"oci:{layout}").out)["disks"]]
    assert f"/disk/{HOSTILE}" in names


@pytest.mark.needs("qemu-img", "bwrap")
def test_an_annotation_is_escaped_in_progress_lines_and_summaries(tmp_path: Path) -> None:
    layout = oci_artifact_layout(tmp_path, [([(b"\0" * 4096, {"annotations": {
        "org.opencontainers.image.title": "vm\x1b[31m\u202e.img"}})], {})])
    result = cdisk("convert", "-v", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 0, result.err
    _clean(result.err + result.out)
    assert "vm\\x1b[31m\\u202e.img" in result.out


@pytest.mark.needs("qemu-img", "bwrap")
def test_on_a_terminal_a_name_can_neither_set_the_title_nor_clear_the_screen(tmp_path: Path) -> None:
    disk = b"\0" * 4096
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/a.img", disk), Entry(f"disk/{HOSTILE}", disk)])])
    code, seen = on_a_terminal("convert", f"oci:{layout}", tmp_path / "out.raw")
    assert code == 4
    assert "\x1b]0;owned" not in seen and "\x1b[2J" not in seen and "\u202e" not in seen and "\x9b" not in seen
    assert "\\x1b]0;owned" in seen



def _raw_layout(tmp_path: Path) -> tuple[str, bytes]:
    disk = bytes(range(256)) * 64
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/a-rather-long-name-for-a-disk.img", disk)])])
    return f"oci:{layout}", disk


@pytest.mark.needs("qemu-img", "bwrap")
def test_the_summary_is_never_broken_by_the_terminal_width(tmp_path: Path) -> None:
    image, _ = _raw_layout(tmp_path)
    code, seen = on_a_terminal("convert", image, tmp_path / "out.raw", columns=50)
    assert code == 0, seen
    # One line, however narrow the terminal: the terminal may fold it on screen, a copy and paste gets it whole.
    assert re.search(r"/disk/a-rather-long-name-for-a-disk\.img \(raw, [^\r\n]*-> [^\r\n]*out\.raw \(raw\) in "
                     r"[0-9.]+ s \[save\]", seen), seen


@pytest.mark.needs("qemu-img", "bwrap")
def test_verbose_on_a_terminal_says_each_step_without_a_source_location(tmp_path: Path) -> None:
    image, _ = _raw_layout(tmp_path)
    code, seen = on_a_terminal("convert", "-v", image, tmp_path / "out.raw")
    assert code == 0, seen
    assert "cdisk: converting" in seen
    assert "output.py" not in seen and not re.search(r"\.py:\d", seen)


@pytest.mark.needs("qemu-img", "bwrap")
def test_off_a_terminal_only_the_result_shows_unless_verbose(tmp_path: Path) -> None:
    image, _ = _raw_layout(tmp_path)
    plain = cdisk("convert", image, tmp_path / "plain.raw")
    assert plain.code == 0 and plain.err == "", plain.err
    assert plain.out.count("\n") == 1 and "-> " in plain.out
    verbose = cdisk("convert", "-v", image, tmp_path / "verbose.raw")
    assert verbose.code == 0 and "cdisk: converting\n" in verbose.err and "cdisk: 100%\n" in verbose.err
    quiet = cdisk("convert", "-q", image, tmp_path / "quiet.raw")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
