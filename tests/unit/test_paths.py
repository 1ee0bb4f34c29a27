"""In-image names cleaned as Go's `filepath.Clean` cleans them (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.paths import go_clean


@pytest.mark.parametrize(
    ("name", "clean"),
    [("x/../disk/a", "disk/a"), ("/disk/a", "/disk/a"), ("./disk//a/", "disk/a"), ("/../disk/a", "/disk/a"),
     ("a/../..", ".."), ("", "."), ("/", "/"), ("../x", "../x")],
)
def test_go_clean(name: str, clean: str) -> None:
    assert go_clean(name) == clean
