"""The `file` engine's push: skopeo copies an image file to a registry, its source and destination never read as
switches, the TLS choice passed on, a failure one line with skopeo's own last words."""

from __future__ import annotations

from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.engines.file import FILES
from cdisk.core.errors import ToolError


def _skopeo(bin_dir: Path, code: int) -> Path:
    """A skopeo that writes its arguments, one per line, beside itself, and exits with `code`."""
    bin_dir.mkdir()
    said = bin_dir / "argv"
    fake = bin_dir / "skopeo"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {said}\necho "skopeo: boom" >&2\nexit {code}\n')
    fake.chmod(0o755)
    return said


@pytest.mark.parametrize(("tls_verify", "switch"), [(True, ["--dest-tls-verify=true"]),
                                                     (False, ["--dest-tls-verify=false"]), (None, [])])
def test_push_runs_skopeo_copy_all(tmp_path: Path, tls_verify: bool | None, switch: list[str]) -> None:
    said = _skopeo(tmp_path / "bin", 0)
    with local.env(PATH=f"{tmp_path / 'bin'}:{local.env['PATH']}"):
        FILES.push("oci:/work/push:localhost/vm:1", "-registry.example/vm:1", tls_verify)
    assert said.read_text().splitlines() == ["copy", "--quiet", "--all", *switch, "--",
                                             "oci:/work/push:localhost/vm:1", "docker://-registry.example/vm:1"]


def test_a_failed_push_is_one_line_naming_the_registry(tmp_path: Path) -> None:
    _skopeo(tmp_path / "bin", 1)
    with local.env(PATH=f"{tmp_path / 'bin'}:{local.env['PATH']}"), pytest.raises(ToolError) as failed:
        FILES.push("oci:/work/push:vm", "registry.example/vm:1", None)
    assert failed.value.message == ("skopeo copy to registry.example/vm:1 failed: skopeo: boom; check the registry "
                                    "and your login (skopeo login)")
