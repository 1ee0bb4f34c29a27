"""The systemd units and the config they read: checked by systemd-analyze, and run as systemd would."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Images, same_disk
from tests.images import sh

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def _cdisk_bin() -> str:
    found = Path(sys.executable).parent / "cdisk"
    assert found.exists(), "the cdisk console script is not installed beside this python"
    return str(found)


def test_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    units = ("cdisk-refresh@.service", "cdisk-refresh@.timer", "cdisk-serve@.service")
    for unit in units:
        text = (UNITS / unit).read_text().replace("/usr/local/bin/cdisk", _cdisk_bin())
        (tmp_path / unit.replace("@.", "@demo.")).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             *(str(tmp_path / unit.replace("@.", "@demo.")) for unit in units)],
                            capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if "cdisk" in line]
    assert result.returncode == 0 and problems == [], result.stderr


def _exec_start(config: dict[str, str], unit: str = "cdisk-refresh@.service", instance: str = "demo",
                runtime: str = "/run") -> list[str]:
    """ExecStart as systemd expands it: $VAR alone splits into words, ${VAR} is replaced within its word; %t, %i."""
    line = next(x for x in (UNITS / unit).read_text().splitlines() if x.startswith("ExecStart="))
    argv: list[str] = []
    for word in line.removeprefix("ExecStart=").replace("%t", runtime).replace("%i", instance).split():
        if bare := re.fullmatch(r"\$(\w+)", word):
            argv.extend(config[bare.group(1)].split())
        else:  # ${VAR}, alone or within a word, is replaced as it is
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: config[m.group(1)], word))
    return argv


def test_example_config_runs_a_refresh(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    example = (UNITS / "cdisk-refresh.conf.example").read_text()
    config = _environment("cdisk-refresh@.service")
    config.update(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    assert config["METRICS_DIR"] == "/var/lib/prometheus/node-exporter"  # Debian's node_exporter reads there
    config.update(IMAGE=name, TARGET=str(tmp_path / "vm raw.img"), OPTIONS=config["OPTIONS"] + " --pull never",
                  METRICS_DIR=str(tmp_path / "textfile"))
    (tmp_path / "textfile").mkdir()  # ExecStartPre
    argv = _exec_start(config)
    assert argv[0] == "/usr/local/bin/cdisk"
    result = subprocess.run([_cdisk_bin(), *argv[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"action": "updated"' in result.stdout.splitlines()[-1]
    assert same_disk(disk, "qcow2", tmp_path / "vm raw.img", "raw")
    assert 'cdisk_refresh_outcome{target="' in (tmp_path / "textfile" / "cdisk-refresh-demo.prom").read_text()


def _environment(unit: str) -> dict[str, str]:
    """The unit's own Environment= settings (the config file read after them may override each)."""
    lines = (UNITS / unit).read_text().splitlines()
    return dict(line.removeprefix("Environment=").split("=", 1) for line in lines if line.startswith("Environment="))


def test_the_refresh_unit_counts_busy_and_not_checked_as_success() -> None:
    from cdisk.core.errors import EXIT_NOT_CHECKED, BusyError

    line = next(x for x in (UNITS / "cdisk-refresh@.service").read_text().splitlines()
                if x.startswith("SuccessExitStatus="))
    assert set(line.removeprefix("SuccessExitStatus=").split()) == {str(BusyError.exit_code), str(EXIT_NOT_CHECKED)}


@pytest.mark.needs("qemu-storage-daemon", "qemu-img")
def test_example_config_serves(images: Images, tmp_path: Path) -> None:
    """The serve unit's command line, as systemd would run it (Type=notify: it says when the export answers)."""
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    example = (UNITS / "cdisk-serve.conf.example").read_text()
    config = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    config.update(IMAGE=name)
    (tmp_path / "cdisk-serve" / "demo").mkdir(parents=True)  # RuntimeDirectory=
    argv = _exec_start(config, "cdisk-serve@.service", runtime=str(tmp_path))
    assert argv[0] == "/usr/local/bin/cdisk"
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(60)
        proc = subprocess.Popen([_cdisk_bin(), *argv[1:]], env={**os.environ, "NOTIFY_SOCKET": str(notify)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert listener.recv(4096).startswith(b"READY=1\n")
            sock = tmp_path / "cdisk-serve" / "demo" / "nbd.sock"
            uri = f"nbd+unix:///disk/disk.qcow2?socket={sock}"
            assert sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, disk, check=False).returncode == 0
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert list((tmp_path / "cdisk-serve" / "demo").iterdir()) == []
