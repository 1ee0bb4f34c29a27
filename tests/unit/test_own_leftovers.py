"""The suite's own temporary files: a green run leaves nothing under the temp dir (pytest keeps the last three
runs' tmp_path trees by default: gigabytes of disks and images on a shared machine); a failed run keeps its
failed tests' trees and the session's shared ones for whoever reads the failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SAMPLE = """
def test_writes(tmp_path, tmp_path_factory):
    (tmp_path / "disk.raw").write_bytes(b"x" * 4096)
    (tmp_path_factory.mktemp("images") / "layer.tar").write_bytes(b"y")

def test_fails(tmp_path):
    (tmp_path / "kept.raw").write_bytes(b"z")
    assert {fail}
"""


def _run_sample(tmp_path: Path, fail: bool) -> list[Path]:
    """The sample suite run under the project's pytest settings with `tmp_path` as its temp dir: what it left."""
    (tmp_path / "test_sample.py").write_text(_SAMPLE.format(fail=not fail))
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == (1 if fail else 0), done.stdout + done.stderr
    return sorted(path for path in temp.rglob("*") if path.is_file())


def test_a_green_run_leaves_no_temporary_file(tmp_path: Path) -> None:
    assert _run_sample(tmp_path, fail=False) == []


def test_a_failed_run_keeps_what_its_failure_may_need_and_no_passed_test_files(tmp_path: Path) -> None:
    # The failed test's own tree, and the session's shared ones (a failure may lie in a fixture's image).
    assert {path.name for path in _run_sample(tmp_path, fail=True)} == {"kept.raw", "layer.tar"}
