"""What an image names reaches the terminal escaped: a file name, an annotation or an architecture can neither
drive the terminal (ESC, BEL, CSI as C1) nor reverse a line (U+202E) nor start a line of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cdisk
from tests.images import Entry, layer_tar, oci_artifact_layout, oci_layout

pytestmark = pytest.mark.needs("qemu-img", "bwrap")

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b2J\u202e\nFAKE: cdisk: done\r"
SHOWN = "\\x1b]0;owned\\x07\\x1b[2J\\x9b2J\\u202e\\x0aFAKE: cdisk: done\\x0d"


def _clean(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e\r"), repr(text)


def test_a_file_name_is_escaped_in_errors_and_in_ls(tmp_path: Path) -> None:
    disk = b"\0" * 4096
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/a.img", disk), Entry(f"disk/{HOSTILE}", disk)])])
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 4 and result.err.count("\n") == 1, result.err
    _clean(result.err)
    assert SHOWN in result.err
    listed = cdisk("ls", f"oci:{layout}")
    assert listed.code == 0, listed.err
    _clean(listed.out)
    assert SHOWN in listed.out and "FAKE" not in listed.out.replace(SHOWN, "")
    # JSON says it as it is: a program reads the name, a terminal never sees it raw.
    names = [d["path"] for d in json.loads(cdisk("ls", "--json", f"oci:{layout}").out)["disks"]]
    assert f"/disk/{HOSTILE}" in names


def test_an_annotation_is_escaped_in_progress_lines_and_summaries(tmp_path: Path) -> None:
    layout = oci_artifact_layout(tmp_path, [([(b"\0" * 4096, {"annotations": {
        "org.opencontainers.image.title": "vm\x1b[31m\u202e.img"}})], {})])
    result = cdisk("convert", "-v", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 0, result.err
    _clean(result.err + result.out)
    assert "vm\\x1b[31m\\u202e.img" in result.out
