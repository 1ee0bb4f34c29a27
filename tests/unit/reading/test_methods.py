"""The reading method chosen once, by rule: pure, no podman needed."""

from __future__ import annotations

import pytest

from cdisk.core.errors import UsageError
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


class _NoMount:
    """An engine of the seam that cannot mount (docker, image files): only what choose_reading asks."""

    name, mounts, copies, stores = "nomount", False, True, True
    cannot_mount = "nomount cannot mount an image; use --method save"


@pytest.mark.parametrize("euid", [0, 1000])
def test_an_engine_that_cannot_mount_saves_and_refuses_a_mount_in_its_own_words(euid: int) -> None:
    engine = _NoMount()
    assert choose_reading(Method.AUTO, True, euid, engine=engine) is Reading.SAVE  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^nomount cannot mount an image; use --method save$"):
        choose_reading(Method.MOUNT, True, euid, engine=engine)  # type: ignore[arg-type]

