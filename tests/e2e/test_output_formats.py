"""-O and -c: every format qemu-img knows is either written (and compared with `qemu-img compare`) or refused as a
usage error before any pull; -f is --force, and says so where a qemu-img habit meets it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cdisk.core.qemu.output_formats import FORMATS
from tests.helpers import Images, assert_one_line_error, cdisk
from tests.images import sh

ABSENT = "localhost/cdisk-test-absent:1"  # never in a store: a pull of it would be the error, not the format's
CHOICES = "use one of raw, qcow2, vmdk, vhdx, vpc, vdi, qed, parallels"

# (format, -c): every format cdisk writes, and the two it compresses.
WRITTEN = [(name, False) for name in FORMATS] + [("qcow2", True), ("vmdk", True)]


def _qemu_formats() -> list[str]:
    """Every format this qemu-img names under "Supported formats" (qemu-img 7.2: 42 of them, on that line) or
    "Supported image formats" (qemu-img 10: on the indented lines after it)."""
    if shutil.which("qemu-img") is None:
        return ["luks", "qcow", "bochs", "dmg", "nbd", "file"]
    listed = subprocess.run(["qemu-img", "--help"], capture_output=True, text=True).stdout
    found = re.search(r"^Supported (?:image )?formats:(.*)\n((?:\n|[ \t]+\S.*\n)*)", listed, re.MULTILINE)
    assert found, listed
    names = (found[1] + " " + found[2]).split()
    assert "qcow2" in names and "raw" in names, listed
    return names


REFUSED = [*sorted(set(_qemu_formats()) - set(FORMATS)), "qcow3", "QCOW2", "vmdk4", ""]


@pytest.fixture
def image(images: Images) -> tuple[str, Path]:
    """An image whose 40 MiB qcow2 disk holds data at its start, in the middle, in 4 KiB scattered and at its end."""
    disk = images.disk(size="40M")
    end = str((40 << 20) - (64 << 10))
    writes = [("0x11", "7M", "1M"), ("0x22", "20M", "4k"), ("0x33", "33M", "512"), ("0x44", end, "64k")]
    sh("qemu-io", "-f", "qcow2", *(a for p, at, n in writes for a in ("-c", f"write -P {p} {at} {n}")), disk)
    return images.build({"disk.qcow2": disk}), disk


def _info(path: Path, fmt: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(sh("qemu-img", "info", "--output=json", "-f", fmt, path).stdout)
    return data


@pytest.mark.parametrize(("fmt", "compress"), WRITTEN, ids=[f"{f}{'-c' if c else ''}" for f, c in WRITTEN])
def test_every_format_cdisk_writes(image: tuple[str, Path], tmp_path: Path, fmt: str, compress: bool) -> None:
    name, disk = image
    target = tmp_path / f"vm.{fmt}"
    result = cdisk("convert", "-q", "--json", "-O", fmt, *(["-c"] if compress else []), name, target)
    assert result.code == 0, result.err
    assert json.loads(result.out)["target_format"] == fmt
    compared = sh("qemu-img", "compare", "-f", "qcow2", "-F", fmt, disk, target, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # compare only warns when the sizes differ (a vpc without force_size is rounded to its geometry).
    info = _info(target, fmt)
    assert info["format"] == fmt and info["virtual-size"] == 40 << 20
    specific = info.get("format-specific", {})
    assert isinstance(specific, dict)
    if fmt == "vmdk":
        assert specific["data"]["create-type"] == ("streamOptimized" if compress else "monolithicSparse")
        assert b'ddb.adapterType = "lsilogic"' in target.read_bytes()[:1 << 20]
    if fmt == "qcow2":
        assert specific["data"]["compat"] == "1.1"
    # What cdisk wrote, cdisk verifies (qed and parallels, which an image's disk may not be, included).
    verified = cdisk("verify", "-q", "--json", name, target)
    assert verified.code == 0, verified.err
    assert json.loads(verified.out)["target_format"] == fmt


@pytest.mark.parametrize("command", ["convert", "refresh"])
@pytest.mark.parametrize("fmt", REFUSED)
def test_a_format_cdisk_does_not_write_is_a_usage_error_before_any_pull(
    tmp_path: Path, command: str, fmt: str
) -> None:
    result = cdisk(command, "-O", fmt, ABSENT, tmp_path / "vm.img")
    assert_one_line_error(result, 2, f"-O {fmt}: ")
    assert CHOICES in result.err
    assert "pull" not in result.err and list(tmp_path.iterdir()) == []


def test_refusals_say_why() -> None:
    luks = cdisk("convert", "-O", "luks", ABSENT, "/nonexistent/vm.img")
    assert_one_line_error(luks, 2, "passphrase")
    qcow = cdisk("convert", "-O", "qcow", ABSENT, "/nonexistent/vm.img")
    assert_one_line_error(qcow, 2, "did you mean qcow2?")
    typo = cdisk("convert", "-O", "qcow3", ABSENT, "/nonexistent/vm.img")
    assert_one_line_error(typo, 2, "did you mean qcow2?")


@pytest.mark.parametrize("command", ["convert", "refresh"])
@pytest.mark.parametrize("fmt", [name for name in FORMATS if name not in ("qcow2", "vmdk")])
def test_compress_where_the_format_cannot_is_a_usage_error(tmp_path: Path, command: str, fmt: str) -> None:
    result = cdisk(command, "-c", "-O", fmt, ABSENT, tmp_path / "vm.img")
    assert_one_line_error(result, 2, f"-c: qemu-img cannot compress {fmt}; ")
    assert "qcow2, vmdk" in result.err and list(tmp_path.iterdir()) == []


def test_compress_without_o_is_refused_for_raw(tmp_path: Path) -> None:
    result = cdisk("convert", "-c", ABSENT, tmp_path / "vm.img")
    assert_one_line_error(result, 2, "-c: qemu-img cannot compress raw")


@pytest.mark.parametrize("command", ["convert", "refresh"])
def test_f_typed_as_qemu_img_s_format_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    # `-f qcow2 IMAGE`: IMAGE is qcow2, TARGET the image's name; nothing is pulled, nothing written.
    as_image = cdisk(command, "-f", "qcow2", ABSENT)
    assert_one_line_error(as_image, 2, "IMAGE is 'qcow2', a format's name after -f, but cdisk's -f is --force")
    assert "-O" in as_image.err
    # `IMAGE -f raw`: TARGET is raw.
    as_target = cdisk(command, ABSENT, "-f", "raw")
    assert_one_line_error(as_target, 2, "TARGET is 'raw'")
    assert "./raw" in as_target.err
    assert list(tmp_path.iterdir()) == []


def test_existing_target_names_force_and_o(tmp_path: Path) -> None:
    (tmp_path / "vm.qcow2").write_bytes(b"previous")
    result = cdisk("convert", "-O", "qcow2", ABSENT, tmp_path / "vm.qcow2")
    assert_one_line_error(result, 6, "already exists; pass --force to replace it (cdisk's -f is --force; the "
                                     "output format is -O)")
    assert (tmp_path / "vm.qcow2").read_bytes() == b"previous"


def test_a_file_named_like_a_format_is_written_as_dot_slash(image: tuple[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    name, disk = image
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qcow2").write_bytes(b"previous")
    result = cdisk("convert", "-q", "-f", "-O", "qcow2", name, "./qcow2")
    assert result.code == 0, result.err
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", disk, tmp_path / "qcow2",
              check=False).returncode == 0


def test_a_target_named_for_another_format_is_written_as_asked_with_a_warning(image: tuple[str, Path],
                                                                              tmp_path: Path) -> None:
    name, disk = image
    target = tmp_path / "vm.qcow2"
    result = cdisk("convert", name, target)  # -O forgotten: raw, as qemu-img convert would write it
    assert result.code == 0, result.err
    assert result.err == (f"cdisk: warning: TARGET {target} is named .qcow2, but the output format is raw: writing "
                          "raw (for qcow2, pass -O qcow2)\n")
    assert sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk, target, check=False).returncode == 0
