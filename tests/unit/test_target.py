"""The target's pure rules: a temp name beside it that stays a legal name, and the one temp-dir rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdisk.core.target import Target, temp_parent, temp_prefix


@pytest.mark.parametrize(("name", "kept"), [("vm.raw", "vm.raw"), ("x" * 234, "x" * 234), ("x" * 236, "x" * 234),
                                           ("é" * 127, "é" * 117)])
def test_temp_prefix_keeps_the_temp_name_legal(tmp_path: Path, name: str, kept: str) -> None:
    # 255 - len("..") - mkstemp's 8 - len(".cdisk-part") = 234 bytes of NAME at most; é is 2 bytes.
    prefix = temp_prefix(str(tmp_path), name)
    assert prefix == f".{kept}."
    assert len(os.fsencode(prefix)) + 8 + len(".cdisk-part") <= 255


def test_one_temp_dir_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert temp_parent("/given", Target("/vms/a.raw", is_block=False)) == "/given"
    assert temp_parent(None, Target("/vms/a.raw", is_block=False)) == "/vms"
    # build's --output (an oci: layout is a directory, an archive a file): the directory that will hold it
    assert temp_parent(None, Target("/out/layout", is_block=False)) == "/out"
    assert temp_parent(None, Target("/dev/sdz", is_block=True)) == str(tmp_path)
    assert temp_parent(None, None) == str(tmp_path)
    monkeypatch.setenv("TMPDIR", "")
    assert temp_parent(None, None) == "/var/tmp"
    monkeypatch.delenv("TMPDIR")
    assert temp_parent(None, Target("/dev/loop7", is_block=True)) == "/var/tmp"
