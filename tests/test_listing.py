"""`cdisk ls`: every candidate with its format, sizes, layer and offset, and refusals, on real images; judged
with a bounded number of qemu-img runs; its table fitted to the terminal (pure)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from cdisk.cli.ls import COLUMNS, table
from cdisk.core.commands.ls import QEMU_IMG_JUDGED, ListedDisk, Listing, header_virtual_size
from cdisk.core.disk.formats import detect_format
from cdisk.core.sources.tar_member import TarMember
from tests.conftest import Images, cdisk
from tests.images import Entry, sh
from tests.tool_fakes import QemuImgFakes


def listing(name: str) -> dict:  # type: ignore[type-arg]
    result = cdisk("ls", "--json", name)
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def test_ls_describes_the_disk(images: Images) -> None:
    disk = images.disk(size="8M")
    name = images.build({"disk.qcow2": disk})
    data = listing(name)
    inspect = json.loads(sh("podman", "image", "inspect", name).stdout)[0]
    assert (data["id"], data["digest"], data["architecture"]) == (inspect["Id"], inspect["Digest"], "amd64")
    [entry] = data["disks"]
    assert entry["path"] == "/disk/disk.qcow2"
    assert (entry["format"], entry["virtual_size"], entry["file_size"]) == ("qcow2", 8 << 20, disk.stat().st_size)
    # One layer holding /disk and its file: the data follows the directory's header and the file's.
    assert (entry["layer"], entry["offset"], entry["refused"], entry["judged_by"]) == (0, 1024, "", "qemu-img")
    assert entry["layer_digest"] == inspect["RootFS"]["Layers"][0]
    assert data["problems"] == []


def test_ls_judges_hostile_images_without_failing(images: Images, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "8M")
    good = images.disk()
    name = images.layers(
        [Entry("disk/a.qcow2", good.read_bytes()), Entry("disk/evil.qcow2", evil.read_bytes()),
         Entry("disk/link.qcow2", symlink="/etc/passwd"), Entry("disk/up.qcow2", symlink="../../etc/passwd")]
    )
    data = listing(name)
    by_path = {d["path"]: d for d in data["disks"]}
    assert sorted(by_path) == ["/disk/a.qcow2", "/disk/evil.qcow2", "/disk/link.qcow2", "/disk/up.qcow2"]
    assert by_path["/disk/a.qcow2"]["refused"] == "" and by_path["/disk/a.qcow2"]["format"] == "qcow2"
    assert "backing file ('/etc/shadow')" in by_path["/disk/evil.qcow2"]["refused"]
    assert "points to /etc/passwd, which is not in the image" in by_path["/disk/link.qcow2"]["refused"]
    assert "out of the image" in by_path["/disk/up.qcow2"]["refused"]
    assert by_path["/disk/link.qcow2"]["offset"] is None
    judged_by = {path: d["judged_by"] for path, d in by_path.items()}
    assert judged_by == {"/disk/a.qcow2": "qemu-img", "/disk/evil.qcow2": "header", "/disk/link.qcow2": "metadata",
                         "/disk/up.qcow2": "metadata"}
    assert data["problems"] == ["4 candidate disks: convert needs --path to choose one"]


def plain_rows(out: str) -> dict[str, list[str]]:
    """The rows of `cdisk ls`'s plain table (off a terminal), by path: each a list of its cells.

    Cells are apart by two spaces or more, and a size holds one ("8.0 MiB"); empty cells at the end are left out.
    """
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("path "))
    assert re.split(r" {2,}", lines[header].strip()) == list(COLUMNS), lines[header]
    rows = [re.split(r" {2,}", line.strip()) for line in lines[header + 1:] if line.startswith("/")]
    return {row[0]: row for row in rows}


def test_ls_table_and_missing_image(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = cdisk("ls", name)
    assert result.code == 0, result.err
    [row] = plain_rows(result.out).values()
    # path, format, virtual size, file size (the qcow2 holds under 1 MiB), layer, offset, and no refusal.
    file_size = f"{disk.stat().st_size / 1024:.1f} KiB"
    assert row == ["/disk/disk.qcow2", "qcow2", "8.0 MiB", file_size, "0", "1024"], row
    missing = cdisk("ls", "-q", "--pull", "never", "localhost/cdisk-test-absent")
    assert missing.code == 3 and "not in the local store" in missing.err, missing.err


def test_ls_judges_the_data_of_many_hard_links_once(images: Images, tmp_path: Path) -> None:
    disk = images.disk(size="4M")
    links = [Entry(f"disk/l{i:04}", hardlink="disk/a.qcow2") for i in range(2000)]
    name = images.layers([Entry("disk/a.qcow2", disk.read_bytes()), *links, Entry("disk/s.qcow2", symlink="a.qcow2")])
    runs = QemuImgFakes(tmp_path / "bin")
    result = cdisk("ls", "--json", name, env=runs.env)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert len(data["disks"]) == 2002
    # One place of data, so one judgement: qemu-img info and check once, not 2002 times.
    assert runs.subcommands() == ["info", "check"]
    judged = {(d["format"], d["virtual_size"], d["offset"], d["refused"], d["judged_by"]) for d in data["disks"]}
    assert judged == {("qcow2", 4 << 20, data["disks"][0]["offset"], "", "qemu-img")}
    assert data["problems"] == ["2002 candidate disks: convert needs --path to choose one"]


def test_ls_runs_qemu_img_on_a_bounded_number_of_distinct_disks(images: Images, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "8M")
    entries = [Entry("disk/0-evil.qcow2", evil.read_bytes())]
    sizes = {}
    for i in range(QEMU_IMG_JUDGED + 4):
        path = tmp_path / f"d{i}.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", path, f"{i + 1}M")
        entries.append(Entry(f"disk/d{i:02}.qcow2", path.read_bytes()))
        sizes[f"/disk/d{i:02}.qcow2"] = (i + 1) << 20
    raw = tmp_path / "tail.raw"
    raw.write_bytes(b"\x5a" * 1000)  # not a whole sector: qemu-img rounds it up, the header reading too
    entries.append(Entry("disk/z.raw", raw.read_bytes()))
    name = images.layers(entries)
    runs = QemuImgFakes(tmp_path / "bin")
    result = cdisk("ls", "--json", name, env=runs.env)
    assert result.code == 0, result.err
    by_path = {d["path"]: d for d in json.loads(result.out)["disks"]}
    # The header refuses the backing file without qemu-img; of the rest, only the first few are opened.
    assert runs.subcommands() == ["info", "check"] * QEMU_IMG_JUDGED
    assert by_path["/disk/0-evil.qcow2"]["judged_by"] == "header"
    assert "backing file ('/etc/shadow')" in by_path["/disk/0-evil.qcow2"]["refused"]
    judged = [by_path[p]["judged_by"] for p in sorted(sizes)]
    assert judged == ["qemu-img"] * QEMU_IMG_JUDGED + ["header"] * 4
    assert {p: by_path[p]["virtual_size"] for p in sizes} == sizes
    assert (by_path["/disk/z.raw"]["format"], by_path["/disk/z.raw"]["virtual_size"]) == ("raw", 1024)
    assert by_path["/disk/z.raw"]["judged_by"] == "header"
    table = cdisk("ls", name, env=runs.env)
    assert table.code == 0
    assert f"* judged by header only: qemu-img judges the first {QEMU_IMG_JUDGED} distinct disks" in table.out
    formats = {path: row[1] for path, row in plain_rows(table.out).items()}
    assert formats == {"/disk/0-evil.qcow2": "-"} | {p: "qcow2" if judged_by == "qemu-img" else "qcow2*"
                                                        for p, judged_by in zip(sorted(sizes), judged, strict=True)} \
        | {"/disk/z.raw": "raw*"}, formats


@pytest.mark.needs("qemu-img")
@pytest.mark.parametrize(("fmt", "options"), [("qcow2", ()), ("raw", ()), ("vmdk", ()), ("vdi", ()),
                                              ("vmdk", ("-o", "subformat=streamOptimized"))])
def test_header_virtual_size_is_what_qemu_img_says(tmp_path: Path, fmt: str, options: tuple[str, ...]) -> None:
    disk = tmp_path / f"d.{fmt}"
    sh("qemu-img", "create", "-q", "-f", fmt, *options, disk, "3M")
    if fmt == "raw":
        disk.write_bytes(disk.read_bytes()[:-100])  # a size qemu-img has to round
    source = TarMember(f"/disk/{disk.name}", str(disk), 0, disk.stat().st_size)
    expected = json.loads(sh("qemu-img", "info", "--output=json", "-f", fmt, disk).stdout)["virtual-size"]
    assert header_virtual_size(detect_format(source.read_at), source) == expected


@pytest.mark.needs("qemu-img")
def test_header_virtual_size_unknown_where_the_header_does_not_say(tmp_path: Path) -> None:
    for fmt in ("vhdx", "vpc"):
        disk = tmp_path / f"d.{fmt}"
        sh("qemu-img", "create", "-q", "-f", fmt, disk, "3M")
        source = TarMember(f"/disk/{disk.name}", str(disk), 0, disk.stat().st_size)
        assert header_virtual_size(detect_format(source.read_at), source) is None


D = "sha256:" + "e9553d567f15" + "ab" * 26
LONG_REFUSAL = ("the disk is a qcow2 with a backing file ('/etc/shadow'); cdisk refuses it because qemu-img would "
                "open files outside the image; rebuild the image with a self-contained disk (e.g. `qemu-img "
                "convert -O qcow2`)")


def _listing(*disks: ListedDisk) -> Listing:
    return Listing("quay.io/containerdisks/fedora:40", "podman", "podman", "875cc1902158" + "0" * 52, D, "amd64",
                   list(disks), [])


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
