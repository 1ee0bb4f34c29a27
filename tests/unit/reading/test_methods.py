"""The reading method chosen once, by rule: pure, no podman needed."""

from __future__ import annotations

import pytest

from cdisk.core.reading.methods import choose_reading
from cdisk.core.request import Method, Reading


@pytest.mark.parametrize(
    ("method", "writes", "euid", "reading"),
    [
        (Method.AUTO, True, 0, Reading.MOUNT),
        (Method.MOUNT, True, 0, Reading.MOUNT),
        (Method.SAVE, True, 0, Reading.SAVE),
        (Method.AUTO, False, 0, Reading.MOUNT),
        (Method.AUTO, True, 1000, Reading.MOUNT_IN_USERNS),
        (Method.MOUNT, True, 1000, Reading.MOUNT_IN_USERNS),
        (Method.SAVE, True, 1000, Reading.SAVE),
        # Reading alone (ls, verify) needs no user namespace: a rootless reader saves.
        (Method.AUTO, False, 1000, Reading.SAVE),
        (Method.MOUNT, False, 1000, Reading.SAVE),
        # The layer directories need no namespace at all, for root or a rootless user.
        (Method.LAYERS, True, 0, Reading.LAYERS),
        (Method.LAYERS, True, 1000, Reading.LAYERS),
        (Method.LAYERS, False, 1000, Reading.LAYERS),
    ],
)
def test_choose_reading(method: Method, writes: bool, euid: int, reading: Reading) -> None:
    assert choose_reading(method, writes, euid) is reading


def test_a_mount_in_the_user_namespace_is_a_mount_to_the_operator() -> None:
    assert [r.method for r in Reading] == ["mount", "mount", "save", "layers"]
