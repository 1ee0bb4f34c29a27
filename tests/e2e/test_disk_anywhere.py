"""Disks outside /disk/ (other projects' image layouts): named by the error and listed by `ls`, by every engine,
reading method and file source; converted only when --path names them; an image whose /disk/ holds its disk is
read as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Convert, Images, assert_one_line_error, cdisk, converted, same_disk
from tests.images import (
    Entry,
    MiB,
    big_disk,
    docker_archive,
    gpt_disk,
    layer_tar,
    make_disk,
    oci_layout,
    podvm_layers,
    sh,
)

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "bwrap")


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / MiB:.1f} MiB"


def _one_disk_named(path: str, what: str) -> str:
    return (f"no disk file directly under /disk/ (found: nothing); the image holds {path} ({what}): pass --path "
            f"{path}")


def test_a_podvm_layout_names_its_disk_and_converts_by_path(images: Images, tmp_path: Path, convert: Convert,
                                                            engine: str, method: str) -> None:
    disk = big_disk(tmp_path / "podvm.qcow2")
    name = images.layers(*podvm_layers(disk.read_bytes(), above=2))
    refused = convert("-q", name, tmp_path / "out.raw")
    assert_one_line_error(refused, 4, _one_disk_named("/image/podvm.qcow2", f"qcow2, {_mib(disk)}"))
    assert not (tmp_path / "out.raw").exists()
    result = convert("-q", "--path", "/image/podvm.qcow2", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    listed = cdisk("ls", "--json", "--engine", engine, "--method", method, name)
    assert listed.code == 0, listed.err
    data = json.loads(listed.out)
    [entry] = data["disks"]
    assert (entry["path"], entry["format"], entry["virtual_size"], entry["found_by"], entry["judged_by"]) == \
        ("/image/podvm.qcow2", "qcow2", 8 * MiB, "search", "qemu-img")
    assert (entry["offset"] is not None) == (method == "save")
    assert data["problems"] == ["no disk file directly under /disk/: convert takes a disk elsewhere only when named: "
                                "pass --path /image/podvm.qcow2"]


@pytest.mark.parametrize("method", ["layers", "mount", "save"])
def test_disks_at_the_image_root_are_named_together(images: Images, tmp_path: Path, method: str) -> None:
    qcow2, raw = big_disk(tmp_path / "rootfs.qcow2"), gpt_disk(tmp_path / "disk.img")
    name = images.layers([Entry("etc/", directory=True), Entry("etc/os-release", b"ID=test\n"),
                          Entry("zeros", bytes(2 * MiB)), Entry("rootfs.qcow2", qcow2.read_bytes()),
                          Entry("disk.img", raw.read_bytes())])
    refused = cdisk("convert", "--method", method, name, tmp_path / "out.raw")
    assert_one_line_error(refused, 4, "no disk file directly under /disk/ (found: nothing); several disk-like files: "
                                      f"/disk.img (raw GPT, 2.0 MiB), /rootfs.qcow2 (qcow2, {_mib(qcow2)}): pass "
                                      "--path with one of them")
    converted(name, tmp_path / "gpt.raw", "--method", method, "--path", "/disk.img")
    assert same_disk(raw, "raw", tmp_path / "gpt.raw", "raw")
    listed = json.loads(cdisk("ls", "--json", "--method", method, name).out)
    assert [(d["path"], d["format"]) for d in listed["disks"]] == [("/disk.img", "raw"), ("/rootfs.qcow2", "qcow2")]
    assert listed["problems"] == ["no disk file directly under /disk/ and 2 disk-like files elsewhere: convert needs "
                                  "--path to choose one"]


def test_a_raw_disk_elsewhere_is_told_by_its_header_and_nothing_else_is(images: Images, tmp_path: Path) -> None:
    raw = gpt_disk(tmp_path / "vm.raw")
    plain = bytes(2 * MiB)  # whole sectors, but no partition table, superblock or image header
    name = images.layers([Entry("srv/", directory=True), Entry("srv/blob.raw", plain), Entry("srv/vm.raw",
                                                                                             raw.read_bytes())])
    refused = cdisk("convert", name, tmp_path / "out.raw")
    assert_one_line_error(refused, 4, _one_disk_named("/srv/vm.raw", "raw GPT, 2.0 MiB"))
    bare = images.layers([Entry("srv/blob.raw", plain), Entry("srv/small.qcow2", make_disk(tmp_path / "s.qcow2")
                                                                                  .read_bytes())])
    # Nothing disk-like: a file under 1 MiB is not looked at, a file of zeros is no disk.
    assert_one_line_error(cdisk("convert", bare, tmp_path / "out.raw"), 4,
                          "no disk file directly under /disk/ (found: nothing); pass --path with the disk file's "
                          "path in the image")
    table = cdisk("ls", bare)
    assert table.code == 0 and "note: no disk file directly under /disk/, and no disk-like file elsewhere" in table.out


def test_a_disk_under_disk_is_read_as_before(images: Images, tmp_path: Path, convert: Convert) -> None:
    disk, other = images.disk(), big_disk(tmp_path / "other.qcow2", pattern=0x11)
    name = images.layers([Entry("disk/disk.qcow2", disk.read_bytes()), Entry("image/other.qcow2", other.read_bytes())])
    result = convert("-q", name, tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    listed = json.loads(cdisk("ls", "--json", name).out)
    assert [(d["path"], d["found_by"]) for d in listed["disks"]] == [("/disk/disk.qcow2", "disk")]


@pytest.mark.parametrize("transport", ["oci", "oci-gzip", "oci-archive", "docker-archive"])
def test_file_sources_name_a_disk_elsewhere(tmp_path: Path, transport: str, no_engines: dict[str, str]) -> None:
    disk = big_disk(tmp_path / "podvm.qcow2")
    tars = [layer_tar(entries) for entries in podvm_layers(disk.read_bytes())]
    if transport == "oci-gzip":
        import gzip

        tars = [gzip.compress(t, 1) for t in tars]
    if transport == "docker-archive":
        source = f"docker-archive:{docker_archive(tmp_path, tars, 'localhost/podvm:1')}"
    else:
        layout, _ = oci_layout(tmp_path, tars)
        if transport == "oci-archive":
            sh("tar", "-cf", tmp_path / "podvm.tar", "-C", layout, ".")
            source = f"oci-archive:{tmp_path / 'podvm.tar'}"
        else:
            source = f"oci:{layout}"
    refused = cdisk("convert", source, tmp_path / "out.raw", env=no_engines)
    assert_one_line_error(refused, 4, _one_disk_named("/image/podvm.qcow2", f"qcow2, {_mib(disk)}"))
    converted(source, tmp_path / "out.raw", "--path", "/image/podvm.qcow2", env=no_engines)
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    listed = cdisk("ls", "--json", source, env=no_engines)
    assert listed.code == 0, listed.err
    [entry] = json.loads(listed.out)["disks"]
    assert (entry["path"], entry["format"], entry["layer"], entry["found_by"]) == \
        ("/image/podvm.qcow2", "qcow2", 1, "search")
    # Of a compressed layer only the copies asked for are kept: the search's find is told by its header alone.
    assert entry["judged_by"] == ("none" if transport == "oci-gzip" else "qemu-img")
    judged = json.loads(cdisk("ls", "--json", "--path", "/image/podvm.qcow2", source, env=no_engines).out)
    assert [(d["format"], d["virtual_size"], d["found_by"]) for d in judged["disks"]] == [("qcow2", 8 * MiB, "path")]


def _chain(depth: int) -> list[Entry]:
    """The directories a/, a/a/, … `depth` levels deep, as a layer tar holds them."""
    return [Entry("/".join(["a"] * n) + "/", directory=True) for n in range(1, depth + 1)]


@pytest.mark.parametrize("method", ["layers", "mount", "save"])
def test_a_disk_deeper_than_the_search_goes_is_not_found_and_the_error_says_so(images: Images, tmp_path: Path,
                                                                              method: str) -> None:
    # Chains of directories in three layers (the review's crafted image, shallower): the search stops at its depth
    # bound by every method, says so, and --path reads the disk all the same.
    from cdisk.core.disk.anywhere import MAX_DEPTH

    disk = big_disk(tmp_path / "deep.qcow2")
    deep = "/".join(["a"] * MAX_DEPTH) + "/deep.qcow2"
    name = images.layers(*([*_chain(MAX_DEPTH + 8), Entry("/".join(["a"] * (MAX_DEPTH + 8)) + f"/end{n}", b"")]
                           for n in range(2)), [*_chain(MAX_DEPTH), Entry(deep, disk.read_bytes())])
    refused = cdisk("convert", "--method", method, name, tmp_path / "out.raw")
    assert_one_line_error(refused, 4, "no disk file directly under /disk/ (found: nothing); no disk-like file "
                                      f"elsewhere either (the search stops after {MAX_DEPTH} levels); pass --path with "
                                      "the disk file's path in the image")
    table = cdisk("ls", "--method", method, name)
    assert table.code == 0 and f"note: the search stops after {MAX_DEPTH} levels: other disks may lie past it" \
        in table.out, table.out
    converted(name, tmp_path / "out.raw", "--method", method, "--path", f"/{deep}")
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_names_are_pasteable_words_and_qed_is_never_offered(images: Images, tmp_path: Path) -> None:
    # A find named to run code, or to hold a newline, is named as one shell word that pastes as the very name; a
    # qed file is named as what cdisk does not read, and the one disk it reads is the --path to pass.
    raw = gpt_disk(tmp_path / "vm.raw").read_bytes()
    evil, newline = "img/$(touch pwned)/vm.raw", "img/two\nlines.raw"
    name = images.layers([Entry("img/", directory=True), Entry("img/$(touch pwned)/", directory=True),
                          Entry(evil, raw), Entry(newline, raw), Entry("img/old.qed", b"QED\0" + bytes(2 * MiB))])
    refused = cdisk("convert", name, tmp_path / "out.raw")
    assert_one_line_error(refused, 4, "several disk-like files: /img/old.qed (qed, 2.0 MiB: cdisk does not read "
                                      "qed), $'/img/two\\x0alines.raw' (raw GPT, 2.0 MiB), "
                                      "'/img/$(touch pwned)/vm.raw' (raw GPT, 2.0 MiB): pass --path with one of them "
                                      "cdisk reads")
    # Pasted into bash as it is printed, the word is the very path: convert reads that file.
    word = refused.err.split("), ")[1].split(" (")[0]
    pasted = sh("bash", "-c", f"printf %s {word}").stdout
    assert pasted == f"/{newline}"
    converted(name, tmp_path / "out.raw", "--path", pasted)
    assert same_disk(tmp_path / "vm.raw", "raw", tmp_path / "out.raw", "raw")
    assert not (Path.cwd() / "pwned").exists()
    # ls's table shows the newline escaped in its row, and under it the --path that pastes.
    listed = cdisk("ls", name)
    assert listed.code == 0 and "\n  --path $'/img/two\\x0alines.raw'\n" in listed.out, listed.out
    only_qed = images.layers([Entry("img/", directory=True), Entry("img/old.qed", b"QED\0" + bytes(2 * MiB))])
    assert_one_line_error(cdisk("convert", only_qed, tmp_path / "out2.raw"), 4,
                          "the image holds only disk-like files cdisk does not read: /img/old.qed (qed, 2.0 MiB: cdisk "
                          "does not read qed); rebuild the image with a raw or qcow2 disk under /disk/")
