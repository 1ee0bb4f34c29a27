"""Real block devices for tests: a loop device over a file in the test's own directory, detached after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.images import sh


@contextmanager
def loop_device(backing: Path, size: int = 8 << 20, fill: int = 0x5A) -> Iterator[Path]:
    """A loop device over `backing` (made here: `size` bytes of `fill`); skips the test where there is none."""
    backing.write_bytes(bytes([fill]) * size)
    attached = sh("losetup", "-f", "--show", backing, check=False)
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = Path(attached.stdout.strip())
    try:
        yield device
    finally:
        sh("losetup", "-d", device)
