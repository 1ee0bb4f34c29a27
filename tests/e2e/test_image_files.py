"""Images that are files — an OCI layout, an oci-archive, a docker-archive — read in place on a host with
neither engine: made by the real `podman save` (every format), `docker save` and `skopeo copy`, or written
here; checked with qemu-img compare.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.helpers import Images, assert_one_line_error, cdisk, converted, same_disk
from tests.images import Entry, layer_tar, make_disk, oci_layout, one_disk_layout, sh, tar_file

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "bwrap")


@pytest.fixture
def saved(images: Images, tmp_path: Path) -> tuple[Path, str]:
    """A containerDisk in podman's store: its disk, its name."""
    disk = images.disk()
    return disk, images.build({"disk.qcow2": disk})


@pytest.mark.parametrize(("fmt", "transport", "extra"), [
    ("oci-dir", "oci", ["--uncompressed"]),
    ("oci-archive", "oci-archive", ["--uncompressed"]),
    ("docker-archive", "docker-archive", []),
])
def test_what_podman_saves_converts_without_any_engine(saved: tuple[Path, str], no_engines: dict[str, str],
                                                       tmp_path: Path, readonly_dir: Path, fmt: str, transport: str,
                                                       extra: list[str]) -> None:
    disk, name = saved
    path = tmp_path / f"saved-{fmt}"
    sh("podman", "save", "-q", "--format", fmt, *extra, "-o", path, name)
    env = no_engines
    # Read where it lies: a --tmpdir where nothing can be made is no obstacle.
    result = cdisk("convert", "--json", "--tmpdir", readonly_dir, f"{transport}:{path}", tmp_path / "out.raw", env=env)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["engine"], data["source"], data["method"]) == ("file", transport, "save")
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.raw", "readonly", f"saved-{fmt}"]
    listing = cdisk("ls", "--json", f"{transport}:{path}", env=env)
    assert listing.code == 0 and json.loads(listing.out)["disks"][0]["path"] == "/disk/disk.qcow2"
    assert json.loads(listing.out)["source"] == transport
    assert f"source {transport}" in cdisk("ls", f"{transport}:{path}", env=env).out
    verdict = cdisk("verify", "--json", f"{transport}:{path}", tmp_path / "out.raw", env=env)
    assert verdict.code == 0 and json.loads(verdict.out)["identical"] is True


def test_refresh_of_a_file_is_a_no_op_until_it_changes(images: Images, no_engines: dict[str, str],
                                                       tmp_path: Path) -> None:
    first, second = images.disk("a.qcow2", pattern=0x11), images.disk("b.qcow2", pattern=0x22)
    archive = tmp_path / "vm.tar"
    sh("podman", "save", "-q", "--format", "oci-archive", "--uncompressed", "-o", archive,
       images.build({"disk.qcow2": first}))
    target, env = tmp_path / "vm.raw", no_engines

    def refresh() -> str:
        result = cdisk("refresh", "--json", f"oci-archive:{archive}", target, env=env)
        assert result.code == 0, result.err
        return str(json.loads(result.out.splitlines()[-1])["action"])

    assert refresh() == "updated" and same_disk(first, "qcow2", target, "raw")
    assert refresh() == "unchanged"
    archive.unlink()
    sh("podman", "save", "-q", "--format", "oci-archive", "--uncompressed", "-o", archive,
       images.build({"disk.qcow2": second}))
    assert refresh() == "updated" and same_disk(second, "qcow2", target, "raw")
    record = json.loads((tmp_path / "vm.raw.cdisk.json").read_text())
    assert (record["engine"], record["source"]) == ("file", "oci-archive")


@pytest.mark.needs("docker", "dockerd")
def test_what_docker_saves(images: Images, docker_host: str, no_engines: dict[str, str], tmp_path: Path) -> None:
    docker_images = Images(images.workdir, "docker")
    disk = docker_images.disk()
    name = docker_images.build({"disk.qcow2": disk})
    try:
        sh("docker", "save", "-o", tmp_path / "d.tar", name)
    finally:
        docker_images.remove()
    converted(f"docker-archive:{tmp_path / 'd.tar'}:{name}", tmp_path / "out.raw", env=no_engines)
    assert same_disk(disk, "qcow2", tmp_path / "out.raw", "raw")


def test_names_and_platforms_in_a_layout(tmp_path: Path) -> None:
    # One index, two images for two platforms under one name: the host's is taken, a name picks, a wrong
    # name or platform lists what there is.
    disks = [Entry("disk/vm.img", data=bytes([n]) * 65536) for n in (1, 2)]
    layout, _ = oci_layout(tmp_path, [layer_tar([disks[0]]), layer_tar([disks[1]])])
    index = json.loads((layout / "index.json").read_text())
    manifest_ref = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_ref["digest"][7:]).read_text())
    entries = []
    for n, arch in enumerate(("amd64", "arm64")):
        one = {**manifest, "layers": [manifest["layers"][n]]}
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids":
                                                                   [manifest["layers"][n]["digest"]]}}
        one["config"] = {**manifest["config"], **_blob(layout, json.dumps(config).encode())}
        entries.append({**manifest_ref, **_blob(layout, json.dumps(one).encode()),
                        "platform": {"os": "linux", "architecture": arch},
                        "annotations": {"org.opencontainers.image.ref.name": "vm"}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    host = os.uname().machine
    if host not in ("x86_64", "aarch64"):
        pytest.skip(f"the layout holds amd64 and arm64, not {host}")
    result = cdisk("convert", "-q", f"oci:{layout}:vm", tmp_path / "out.raw")
    assert result.code == 0, result.err
    expected = bytes([1 if host == "x86_64" else 2]) * 65536
    assert (tmp_path / "out.raw").read_bytes() == expected
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}:other", tmp_path / "x.raw"), 3, "(it has: 'vm')")
    other = "arm64" if host == "x86_64" else "amd64"
    result = cdisk("convert", "-q", "--platform", f"linux/{other}", f"oci:{layout}:vm", tmp_path / "other.raw")
    assert result.code == 0, result.err
    assert (tmp_path / "other.raw").read_bytes() == bytes([2 if other == "arm64" else 1]) * 65536
    assert_one_line_error(cdisk("convert", "-q", "--platform", "linux/s390x", f"oci:{layout}:vm",
                                tmp_path / "y.raw"), 3, "'linux/amd64', 'linux/arm64'")


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def test_hostile_layouts_and_archives(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"QFI\xfb" + b"host data" * 100)
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/vm.img", data=b"x" * 4096)])])
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"][7:]
    layer = json.loads((layout / "blobs" / "sha256" / manifest).read_text())["layers"][0]["digest"][7:]
    (layout / "blobs" / "sha256" / layer).unlink()
    (layout / "blobs" / "sha256" / layer).symlink_to(secret)  # a blob that is a host file
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "a.raw"), 3,
                          "is a symlink, which no file of a layout may be")
    # An archive whose manifest climbs out: the name is cleaned inside the archive, and is not there.
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in {"manifest.json": json.dumps([{"Config": "c.json", "Layers": ["../../../etc/x"]}]).encode(),
                           "c.json": b'{"rootfs": {"diff_ids": ["sha256:00"]}}'}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)

            tar.addfile(info, io.BytesIO(data))
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{archive}", tmp_path / "b.raw"), 3,
                          "no file '../../../etc/x'")
    assert_one_line_error(cdisk("convert", "-q", f"oci:{tmp_path / 'nothing'}", tmp_path / "c.raw"), 3,
                          "not an OCI layout")
    assert_one_line_error(cdisk("convert", "-q", "oci-archive:", tmp_path / "d.raw"), 2, "no path after oci-archive:")
    assert not any(p.suffix == ".raw" for p in tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["fifo", "device", "dir-symlink"])
def test_blobs_that_are_not_regular_files_are_refused(tmp_path: Path, kind: str) -> None:
    layout, _, layer = one_disk_layout(tmp_path)
    if kind == "dir-symlink":  # blobs/ itself leads elsewhere
        elsewhere = tmp_path / "elsewhere"
        (layout / "blobs").rename(elsewhere)
        (layout / "blobs").symlink_to(elsewhere)
        says = "cannot open"
    else:
        layer.unlink()
        if kind == "fifo":
            os.mkfifo(layer)  # opening it must not block
        else:
            os.mknod(layer, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        says = "not a regular file"
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw", timeout=60), 3, says)
    assert not (tmp_path / "out.raw").exists()


def _rewrite(layout: Path, manifest: Path, document: object) -> None:
    """Replace the manifest with `document` (under its new digest) in the index."""
    data = json.dumps(document).encode()
    new = _blob(layout, data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = new["digest"]
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("document", [[1, 2], {"config": "x"}, {"config": {"digest": "sha256:" + "0" * 64},
                                                                 "layers": {"a": 1}}],
                         ids=["a-list", "config-a-string", "layers-a-dict"])
def test_ill_formed_documents_are_one_line(tmp_path: Path, document: object) -> None:
    layout, manifest, _ = one_disk_layout(tmp_path)
    _rewrite(layout, manifest, document)
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), 3)


def test_a_json_bomb_and_a_wrong_digest(tmp_path: Path) -> None:
    layout, manifest, _ = one_disk_layout(tmp_path)
    (layout / "index.json").write_text("[" * 200_000)
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), 3, "is not JSON cdisk reads")
    layout, manifest, _ = one_disk_layout(tmp_path / "second")
    manifest.write_text(manifest.read_text().replace('"layers"', ' "layers"'))  # no longer its digest
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), 3, "does not match its digest")


def test_an_image_for_another_platform_is_refused(tmp_path: Path) -> None:
    layout, _, _ = one_disk_layout(tmp_path)
    index = json.loads((layout / "index.json").read_text())
    other = "s390x" if os.uname().machine != "s390x" else "amd64"
    index["manifests"][0]["platform"] = {"os": "linux", "architecture": other}
    (layout / "index.json").write_text(json.dumps(index))
    assert_one_line_error(cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw"), 3, f"'linux/{other}'")


def test_archive_tricks(tmp_path: Path) -> None:
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l/layer.tar"]}]).encode()
    config = b'{"rootfs": {"diff_ids": ["sha256:00"]}}'
    twice = tar_file(tmp_path / "twice.tar", [("manifest.json", manifest), ("c.json", config),
                                                 ("l/layer.tar", b""), ("manifest.json", b"[]")])
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{twice}", tmp_path / "a.raw"), 3, "twice")
    outside = tar_file(tmp_path / "out.tar", [("manifest.json", manifest), ("c.json", config),
                                                 ("l/layer.tar", "/etc/passwd")])
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{outside}", tmp_path / "b.raw"), 3,
                          "no file 'l/layer.tar'")
    ill = tar_file(tmp_path / "ill.tar", [("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": 5,
                                                                             "Layers": 5}]).encode()),
                                             ("c.json", config)])
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{ill}:a:1", tmp_path / "c.raw"), 3, "is not a list")
    fine = tar_file(tmp_path / "fine.tar", [("manifest.json", manifest), ("c.json", config),
                                               ("l/layer.tar", b"")])
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{fine}:@\u00b2", tmp_path / "d.raw"), 3,
                          "(tags: 'a:1')")


def test_archive_bounds_and_broken_layer_lists(tmp_path: Path) -> None:
    config = b'{"rootfs": {"diff_ids": ["sha256:00"]}}'
    many = json.dumps([{"Config": "c.json", "Layers": ["l"] * 501}]).encode()
    huge = tar_file(tmp_path / "many.tar", [("manifest.json", many), ("c.json", config), ("l", b"")])
    assert_one_line_error(cdisk("convert", "-q", f"docker-archive:{huge}", tmp_path / "a.raw"), 3, "more than 500")
    # An escape sequence in a name is shown escaped, never sent to the terminal.
    named = json.dumps([{"Config": "\x1b]2;owned\x07.json", "Layers": ["l"]}]).encode()
    escape = tar_file(tmp_path / "esc.tar", [("manifest.json", named), ("l", b"")])
    result = cdisk("convert", "-q", f"docker-archive:{escape}", tmp_path / "b.raw")
    assert_one_line_error(result, 3)
    assert "\x1b" not in result.err, result.err


def test_a_layer_list_that_breaks_half_way(tmp_path: Path) -> None:
    # The first layer is opened, the second is not a layer: one line, every descriptor closed once.
    layout, manifest, _ = one_disk_layout(tmp_path)
    document = json.loads(manifest.read_text())
    _rewrite(layout, manifest, {**document, "layers": [*document["layers"], 1]})
    archive = tmp_path / "layout.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    for source in (f"oci:{layout}", f"oci-archive:{archive}"):
        assert_one_line_error(cdisk("convert", "-q", source, tmp_path / "out.raw"), 3, "a layer in")


def test_a_manifest_that_names_its_layers_twice_is_read_as_skopeo_reads_it(tmp_path: Path) -> None:
    decoy = make_disk(tmp_path / "decoy.raw", "raw", "4M", 0x11)
    real = make_disk(tmp_path / "real.raw", "raw", "4M", 0x22)
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", decoy.read_bytes())]),
                                      layer_tar([Entry("disk/disk.img", real.read_bytes())])])
    index = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads(manifest_path.read_text())
    lower = manifest["layers"][0]
    # `layers` names the decoy only, `LAYERS` after it both: Go keeps the second (the real disk on top).
    text = json.dumps(manifest).replace('"layers": ', f'"layers": {json.dumps([lower])}, "LAYERS": ', 1)
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 0, result.err
    assert same_disk(real, "raw", tmp_path / "out.raw", "raw")


def test_a_blob_that_is_a_device_is_judged_not_opened(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.raw", "raw", "4M")
    layout, _ = oci_layout(tmp_path, [layer_tar([Entry("disk/disk.img", disk.read_bytes())])])
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    blob.unlink()
    # A device no driver serves: opened, it fails (ENXIO); judged first, it is refused for what it is.
    os.mknod(blob, 0o600 | stat.S_IFCHR, os.makedev(240, 7))
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 3 and "is not a regular file" in result.err, result.err


@pytest.mark.parametrize("exists", [True, False])
def test_an_index_that_is_a_symlink_tells_nothing_of_its_target(tmp_path: Path, exists: bool) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    target = tmp_path / "root-only"
    if exists:
        target.write_text("{}")
    (layout / "index.json").symlink_to(target)
    result = cdisk("convert", "-q", f"oci:{layout}", tmp_path / "out.raw")
    assert result.code == 3 and f"{layout} is not an OCI layout (no index.json)" in result.err, result.err

