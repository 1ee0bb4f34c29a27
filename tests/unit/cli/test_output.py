"""What reaches the terminal: every character of a name a terminal would act on, shown as an escape."""

from __future__ import annotations

import pytest

from cdisk.cli.output import printable


@pytest.mark.parametrize(("name", "shown"), [
    ("disk/vm.img", "disk/vm.img"),
    ("ü [red] é", "ü [red] é"),
    ("a\x1b]0;t\x07b", "a\\x1b]0;t\\x07b"),
    ("a\nb\rc\x7f", "a\\x0ab\\x0dc\\x7f"),
    ("a\x9b2J", "a\\x9b2J"),
    ("a\u202eb\u200bc\u2028d", "a\\u202eb\\u200bc\\u2028d"),
    ("a\udc9b[2J", "a\\x9b[2J"),  # an undecodable byte 0x9b (a CSI), kept as a surrogate: shown as that byte
])
def test_printable(name: str, shown: str) -> None:
    assert printable(name) == shown
    assert printable(name).encode("utf-8")  # and it can always be written out
