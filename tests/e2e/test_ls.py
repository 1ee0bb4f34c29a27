"""`cdisk ls`: every candidate with its format, sizes, layer and offset, and refusals, on real images; judged
with a bounded number of qemu-img runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cdisk.cli.ls import COLUMNS
from cdisk.core.commands.ls import QEMU_IMG_JUDGED
from tests.helpers import Images, cdisk
from tests.images import Entry, sh
from tests.tool_fakes import QemuImgFakes


def listing(*args: str) -> dict:  # type: ignore[type-arg]
    result = cdisk("ls", "--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def test_ls_describes_the_disk(images: Images) -> None:
    disk = images.disk(size="8M")
    name = images.build({"disk.qcow2": disk})
    data = listing("--method", "save", name)
    inspect = json.loads(sh("podman", "image", "inspect", name).stdout)[0]
    # `image_id`, as every other command's JSON names it.
    assert "id" not in data and data["method"] == "save"
    assert (data["image_id"], data["digest"], data["architecture"]) == (inspect["Id"], inspect["Digest"], "amd64")
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
    # Layer and offset only where the disk is read at an offset of a layer tar.
    in_place = [c for c in COLUMNS if c not in ("layer", "offset")]
    assert re.split(r" {2,}", lines[header].strip()) in (list(COLUMNS), in_place), lines[header]
    rows = [re.split(r" {2,}", line.strip()) for line in lines[header + 1:] if line.startswith("/")]
    return {row[0]: row for row in rows}


def test_ls_table_and_missing_image(images: Images) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = cdisk("ls", "--method", "save", name)
    assert result.code == 0, result.err
    [row] = plain_rows(result.out).values()
    # path, format, virtual size, file size (the qcow2 holds under 1 MiB), layer, offset, and no refusal.
    file_size = f"{disk.stat().st_size / 1024:.1f} KiB"
    assert row == ["/disk/disk.qcow2", "qcow2", "8.0 MiB", file_size, "0", "1024"], row
    # Read in place (the default here: the store's layer directories), a file has no offset to show.
    in_place = cdisk("ls", name)
    assert plain_rows(in_place.out) == {"/disk/disk.qcow2": ["/disk/disk.qcow2", "qcow2", "8.0 MiB", file_size]}
    assert "method layers" in in_place.out.splitlines()[0]
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
    assert sorted(runs.subcommands()) == ["check", "info"]  # at once (qemu_img.info_and_check)
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
    assert sorted(runs.subcommands()) == ["check"] * QEMU_IMG_JUDGED + ["info"] * QEMU_IMG_JUDGED
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


def test_ls_reads_in_place_by_every_method(images: Images, reading: tuple[str, str]) -> None:
    engine, method = reading
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = cdisk("ls", "--json", "-v", "--engine", engine, "--method", method, name)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    [entry] = data["disks"]
    assert (entry["path"], entry["format"], entry["refused"], entry["judged_by"]) == \
        ("/disk/disk.qcow2", "qcow2", "", "qemu-img")
    assert data["method"] == method and f"({method} method)" in result.err
    # An offset where the disk is a byte range of a layer tar; in place, none.
    assert (entry["offset"] is not None, entry["layer"] is not None) == (method == "save",) * 2


def test_ls_needs_no_room_for_a_copy(images: Images, readonly_dir: Path) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("ls", "--json", "--tmpdir", readonly_dir, name)
    saved = cdisk("ls", "--json", "--tmpdir", readonly_dir, "--method", "save", name)
    assert result.code == 0, result.err
    assert [d["path"] for d in json.loads(result.out)["disks"]] == ["/disk/disk.qcow2"]
    assert saved.code == 6 and "pass --tmpdir" in saved.err  # the save method's copy does need it


def test_ls_path_lists_the_one_file_it_names(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.layers([Entry("disk/a.qcow2", disk.read_bytes()), Entry("data/b.qcow2", disk.read_bytes()),
                          Entry("disk/out", symlink="/etc/passwd")])
    data = listing("--path", "/data/b.qcow2", name)
    assert [(d["path"], d["format"], d["found_by"]) for d in data["disks"]] == [("/data/b.qcow2", "qcow2", "path")]
    assert data["problems"] == []
    refused = listing("--path", "/disk/out", name)
    assert [d["judged_by"] for d in refused["disks"]] == ["metadata"]
    assert "not in the image" in refused["disks"][0]["refused"]
    missing = cdisk("ls", "--path", "/disk/nope", name)
    assert missing.code == 4 and "/disk/nope does not exist in the image" in missing.err


def test_ls_table_breaks_no_name(images: Images) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    long_tag = name.rpartition(":")[0] + ":v0.13.0-rc1-" + "x" * 60
    sh("podman", "tag", name, long_tag)
    images.names.append(long_tag)
    # Off a terminal, nothing wraps, however long a line.
    lines = cdisk("ls", long_tag).out.splitlines()
    assert lines[0].startswith(f"{long_tag}  id ") and lines[0].endswith("method layers")
