"""The fixed cost's cuts give the answers the slower ways gave (checked side by side on real images, never timed):
the image looked up in podman's store files is the `Image` `podman image inspect` gives, and a convert that took it
writes the same disk; where the files cannot answer, podman is asked as before."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cdisk.core.engines import podman, store_lookup
from tests.helpers import Images, converted, same_disk
from tests.images import Entry, make_disk, sh
from tests.tool_fakes import QemuImgFakes

pytestmark = pytest.mark.needs("podman")


def _same_as_podman(reference: str) -> None:
    files = store_lookup.lookup(reference)
    assert files is not None, reference
    # podman's answer as its CLI path parses it (`podman image inspect` in a child of the test's own environment:
    # plumbum's in this process keeps the first test's TMPDIR, which podman needs for a pulled image)
    inspected = json.loads(sh("podman", "image", "inspect", "--format", "json", "--", reference).stdout)
    assert files == podman._image(reference, inspected[0])


def test_a_built_image_is_what_podman_inspect_says(images: Images) -> None:
    name = images.build({"disk.qcow2": images.disk()})
    _same_as_podman(name)
    image_id = sh("podman", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
    _same_as_podman(image_id)
    _same_as_podman("sha256:" + image_id)
    other = name.replace(":latest", ":second")
    sh("podman", "tag", name, other)
    images.names.append(other)
    _same_as_podman(other)
    _same_as_podman(name.removesuffix(":latest"))


def test_a_pulled_image_of_three_layers_is_what_podman_inspect_says(images: Images, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.qcow2")
    name = images.layers([Entry("etc/x", b"x")], [Entry("disk/", directory=True)],
                         [Entry("disk/d.qcow2", disk.read_bytes())])
    found = store_lookup.lookup(name)
    assert found is not None and len(found.layer_dirs) == 3 and len(found.layers) == 3
    _same_as_podman(name)


def test_convert_takes_the_image_from_the_store_files(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    result = converted(name, tmp_path / "out.raw")
    assert "(its files: no API at" in result.err
    assert json.loads(result.out)["method"] == "layers"
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_where_the_files_cannot_answer_podman_does(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    short = name.removeprefix("localhost/")  # a short name: podman resolves it
    result = converted(short, tmp_path / "short.raw")
    assert "(podman CLI: no API at" in result.err
    assert same_disk(disk, "qcow2", tmp_path / "short.raw", "raw")
    # Another store named by the environment: podman finds it (the CLI runs without CONTAINER_CONNECTION).
    result = converted(name, tmp_path / "other.raw", env={"CONTAINER_CONNECTION": "elsewhere"})
    assert "(podman CLI: no API at" in result.err
    assert same_disk(disk, "qcow2", tmp_path / "other.raw", "raw")


def _meets(mine: Path, other: Path) -> str:
    """A fake qemu-img's hook: say it started, then wait up to 20 s for the other subcommand's word (exit 9 without
    it), so that only runs at once both get through."""
    return (f"open({str(mine)!r}, 'w').close()\nend = time.monotonic() + 20\n"
            f"while not os.path.exists({str(other)!r}):\n    time.sleep(0.01)\n"
            "    if time.monotonic() > end: sys.exit(9)\n")


def test_info_and_check_run_at_once_and_judge_as_before(images: Images, tmp_path: Path) -> None:
    disk = images.disk()
    name = images.build({"disk.qcow2": disk})
    info, check = tmp_path / "info-started", tmp_path / "check-started"
    fakes = QemuImgFakes(tmp_path / "fakes", {"info": _meets(info, check), "check": _meets(check, info)})
    result = converted(name, tmp_path / "out.raw", env=fakes.env)
    assert fakes.subcommands()[2:] == ["convert"] and sorted(fakes.subcommands()[:2]) == ["check", "info"]
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    assert json.loads(result.out)["virtual_size"] == 8 << 20


def test_a_compressed_disk_is_converted_with_the_most_requests_in_flight(images: Images, tmp_path: Path) -> None:
    """qemu-img convert -m 16 where the disk has compressed clusters (CPU-bound: more requests keep the writes
    going); the default elsewhere."""
    plain = images.disk()
    compressed = tmp_path / "compressed.qcow2"
    sh("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", plain, compressed)
    seen = tmp_path / "convert-args"
    fakes = QemuImgFakes(tmp_path / "fakes", {"convert": f"open({str(seen)!r}, 'a').write(repr(args) + '\\n')\n"})
    for disk in (compressed, plain):
        converted(images.build({"disk.qcow2": disk}), tmp_path / f"{disk.stem}.raw", env=fakes.env)
        assert same_disk(disk, "qcow2", tmp_path / f"{disk.stem}.raw", "raw")
    runs = [ast.literal_eval(line) for line in seen.read_text().splitlines()]
    assert runs[0][runs[0].index("-m"):runs[0].index("-m") + 2] == ["-m", "16"]
    assert "-m" not in runs[1]
