"""`cdisk ls`: every candidate with its format, sizes, layer and offset, and refusals, on real images."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Images, cdisk
from tests.images import Entry, sh


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
    assert (entry["layer"], entry["offset"], entry["refused"]) == (0, 1024, "")
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
    assert data["problems"] == ["4 candidate disks: convert needs --path to choose one"]


def test_ls_table_and_missing_image(images: Images) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    result = cdisk("ls", name)
    assert result.code == 0
    assert "/disk/disk.qcow2" in result.out and "qcow2" in result.out and "8.0 MiB" in result.out
    missing = cdisk("ls", "-q", "--pull", "never", "localhost/cdisk-test-absent")
    assert missing.code == 3
