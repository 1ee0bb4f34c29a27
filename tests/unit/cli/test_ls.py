"""`cdisk ls`'s table: fitted to the terminal, one row a line off it, and printed as it is (pure)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cdisk.cli.ls import COLUMNS, table
from cdisk.core.commands.ls import QEMU_IMG_JUDGED, ListedDisk, Listing

D = "sha256:" + "e9553d567f15" + "ab" * 26
LONG_REFUSAL = ("the disk is a qcow2 with a backing file ('/etc/shadow'); cdisk refuses it because qemu-img would "
                "open files outside the image; rebuild the image with a self-contained disk (e.g. `qemu-img "
                "convert -O qcow2`)")


def _listing(*disks: ListedDisk) -> Listing:
    return Listing("quay.io/containerdisks/fedora:40", "podman", "podman", "875cc1902158" + "0" * 52, D, "amd64",
                   "save", list(disks), [])


def _rows() -> list[ListedDisk]:
    return [
        ListedDisk("/disk/disk.qcow2", "qcow2", 8 << 20, 196608, 0, D, 1024, "", "qemu-img"),
        ListedDisk("/disk/evil.qcow2", None, None, 196608, 0, D, 197632, LONG_REFUSAL, "header"),
        ListedDisk("/disk/big.qcow2", "qcow2", 1 << 40, (1 << 30) - 1, 12, D, 1073741824, "", "qemu-img"),
    ]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_table_fits_the_terminal(width: int) -> None:
    text = table(_listing(*_rows()), width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width, text
    [header] = [line for line in lines if line.startswith("path ")]
    shown = COLUMNS if width >= 120 else tuple(c for c in COLUMNS if c not in ("layer", "offset"))
    # Every header on the one header line, in order, and the rule right under it: nothing wrapped.
    assert header.split() == " ".join(shown).split(), text
    assert set(lines[lines.index(header) + 1]) == {"─"}
    assert ("layers: 0 sha256:e9553d567f15, 12 sha256:e9553d567f15" in lines) == (width >= 120)
    assert ("layer and offset: see `cdisk ls --json`, or a wider terminal" in lines) == (width < 120)
    # The long refusal wraps inside its own column: each of its lines starts there, and they read back whole.
    column = header.index("refused because")
    first = next(i for i, line in enumerate(lines) if line.startswith("/disk/evil.qcow2"))
    last = next(i for i, line in enumerate(lines) if line.startswith("/disk/big.qcow2"))
    assert last - first > 1
    assert all(not line[:column].strip() for line in lines[first + 1:last])
    assert " ".join(line[column:].strip() for line in lines[first:last]) == LONG_REFUSAL
    assert "digest sha256:e9553d567f15 " in lines[0] + " " and D not in text


@pytest.mark.parametrize("width", [80, 120, 200])
def test_table_prints_unchanged_through_a_console_of_its_width(width: int) -> None:
    """`report` prints the text again through rich on a terminal: nothing in it may make rich rewrap it."""
    text = table(_listing(*_rows()), width=width)
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, highlight=False).print(text)
    assert [line.rstrip() for line in out.getvalue().splitlines()] == text.splitlines()


def test_table_marks_disks_judged_by_header_only() -> None:
    disks = [ListedDisk("/disk/a", "qcow2", 1 << 20, 512, 0, D, 1024, "", "header"),
             ListedDisk("/disk/b", None, None, 512, 0, D, 2048, "the disk is LUKS-encrypted", "header")]
    lines = table(_listing(*disks), width=120).splitlines()
    assert lines[3].split()[:2] == ["/disk/a", "qcow2*"] and lines[4].split()[:2] == ["/disk/b", "-"]
    assert f"* judged by header only: qemu-img judges the first {QEMU_IMG_JUDGED} distinct disks of plain " \
           "layers; convert checks the whole disk" in lines
    assert not [line for line in table(_listing(*_rows()), width=120).splitlines() if line.startswith("*")]


def test_plain_table_keeps_one_row_a_line() -> None:
    lines = table(_listing(*_rows())).splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["/disk/disk.qcow2", "/disk/evil.qcow2", "/disk/big.qcow2"]
    assert LONG_REFUSAL in lines[3]


def test_table_shows_names_that_look_like_markup_as_they_are() -> None:
    disks = [ListedDisk("/disk/[/x]:cd:[bold].qcow2", "qcow2", 1 << 20, 512, 0, D, 1024, "", "qemu-img")]
    text = table(_listing(*disks), width=120)
    out = io.StringIO()
    Console(file=out, width=120, force_terminal=True, highlight=False).print(text)  # as `report` does on a TTY
    assert "/disk/[/x]:cd:[bold].qcow2" in out.getvalue()
    assert [line.rstrip() for line in out.getvalue().splitlines()] == text.splitlines()


PODVM = "registry.example.com:5000/confidential-containers/podvm-generic-ubuntu-amd64:v0.13.0-rc1"


def _podvm(*disks: ListedDisk) -> Listing:
    return Listing(PODVM, "podman", "podman", "875cc1902158" + "0" * 52, D, "amd64", "layers", list(disks), [])


@pytest.mark.parametrize("width", [80, 100, 200])
def test_a_narrow_terminal_breaks_no_name_inside(width: int) -> None:
    path = "/image/podvm-generic-ubuntu-amd64/disk-image-of-the-pod.qcow2"
    disks = [ListedDisk(path, "qcow2", 6 << 30, 800 << 20, None, None, None, "", "qemu-img", "search"),
             ListedDisk("/rootfs.qcow2", None, None, 1 << 30, None, None, None, LONG_REFUSAL, "header", "search")]
    text = table(_podvm(*disks), width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width, text
    # The tag, each piece of a path: whole on one line, never cut.
    for piece in (":v0.13.0-rc1", "/podvm-generic-ubuntu-amd64", "/disk-image-of-the-pod.qcow2", "/rootfs.qcow2",
                  "registry.example.com", "/confidential-containers"):
        assert any(piece in line for line in lines), (piece, text)
    # Read in place: no layer, no offset, and nothing said about them.
    [header] = [line for line in lines if line.startswith("path ")]
    assert "layer" not in header and "offset" not in header and "layer and offset" not in text


def test_plain_table_never_wraps() -> None:
    path = "/image/" + "/".join(f"level-{n:02}" for n in range(30)) + "/podvm.qcow2"
    refusal = LONG_REFUSAL + " " + LONG_REFUSAL
    disks = [ListedDisk(path, "qcow2", 1 << 30, 1 << 20, 0, D, 1024, refusal, "header", "search")]
    lines = table(_podvm(*disks)).splitlines()
    assert lines[0].startswith(f"{PODVM}  id 875cc1902158  digest sha256:e9553d567f15  ")
    [row] = [line for line in lines if line.startswith("/image/")]
    assert row.startswith(path + "  ") and row.endswith(refusal) and len(row) > 500


def test_a_find_that_would_not_paste_as_shown_gets_its_path_as_one_shell_word() -> None:
    def found(path: str, refused: str = "") -> ListedDisk:
        return ListedDisk(path, "qcow2", 1 << 30, 1 << 30, None, None, None, refused, "qemu-img", "search")

    disks = [found("/image/podvm.qcow2"), found("/img/two\nlines.raw"), found("/img/$(touch pwned)/vm.raw"),
             found("/my disks/vm.img"), found("/img/old qed", refused="the disk is a QED image")]
    lines = table(_podvm(*disks)).splitlines()
    hint = lines.index("found outside /disk/ by their headers: convert takes none of them without --path")
    # The row shows the newline escaped (\x0a), which would paste as a backslash; the hint pastes as the name. A
    # path that pastes as shown gets no hint, nor does one convert refuses.
    assert lines[hint + 1:] == ["  --path $'/img/two\\x0alines.raw'", "  --path '/img/$(touch pwned)/vm.raw'",
                                "  --path '/my disks/vm.img'"]
    assert any(line.startswith("/img/two\\x0alines.raw ") for line in lines)
