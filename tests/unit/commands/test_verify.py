"""The formats of a target cdisk wrote that an image's disk may not be (qed, parallels), told by their headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdisk.core.commands.verify import _written_format
from cdisk.core.errors import UnsafeImageError
from tests.images import sh


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize(("fmt", "told"), [("qed", "qed"), ("parallels", "parallels"), ("qcow2", None),
                                           ("raw", None), ("vmdk", None)])
def test_a_target_s_format_by_its_header(tmp_path: Path, fmt: str, told: str | None) -> None:
    sh("qemu-img", "create", "-q", "-f", fmt, tmp_path / "t", "8M")
    assert _written_format((tmp_path / "t").read_bytes()[:64]) == told


@pytest.mark.needs("qemu-img")
def test_a_qed_target_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    sh("qemu-img", "create", "-q", "-f", "raw", tmp_path / "base", "8M")
    sh("qemu-img", "create", "-q", "-f", "qed", "-b", tmp_path / "base", "-F", "raw", tmp_path / "t")
    with pytest.raises(UnsafeImageError, match="QED with a backing file"):
        _written_format((tmp_path / "t").read_bytes()[:64])
