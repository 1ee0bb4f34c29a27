"""`cdisk build`: containerDisks written by cdisk, read back by podman, docker, skopeo and cdisk itself; checked
with qemu-img compare against the disk they were built from."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import READINGS, assert_one_line_error, cdisk, podman_major, same_disk
from tests.images import make_disk, remove_image, sh

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

pytestmark = pytest.mark.needs("podman", "qemu-img", "qemu-io", "bwrap")


@pytest.fixture
def names() -> Iterator[list[tuple[str, str]]]:
    """(engine, name) of the images a test built; removed after it."""
    built: list[tuple[str, str]] = []
    yield built
    for engine, name in built:
        remove_image(name, engine)


def _name(names: list[tuple[str, str]], engine: str = "podman") -> str:
    name = f"localhost/cdisk-build-{uuid.uuid4().hex[:12]}:1"
    names.append((engine, name))
    return name


def _json(run: object) -> dict[str, object]:
    return json.loads(run.out)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(("engine", "method"), READINGS, ids=["-".join(r) for r in READINGS])
def test_built_images_convert_back_to_the_disk(request: pytest.FixtureRequest, tmp_path: Path,
                                               names: list[tuple[str, str]], engine: str, method: str) -> None:
    if engine == "docker":
        request.getfixturevalue("docker_host")
    disk = make_disk(tmp_path / "in.qcow2")
    name = _name(names, engine)
    built = cdisk("build", "--json", "--engine", engine, disk, name)
    assert built.code == 0, built.err
    result = _json(built)
    assert (result["image"], result["destination"], result["format"]) == (name, engine, "qcow2")
    listed = cdisk("ls", "--json", "--engine", engine, name)
    assert listed.code == 0, listed.err
    [only] = _json(listed)["disks"]  # type: ignore[misc]
    assert (only["path"], only["format"], only["refused"]) == ("/disk/disk.img", "qcow2", "")
    out = tmp_path / "out.raw"
    converted = cdisk("convert", "-q", "--engine", engine, "--method", method, name, out)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "qcow2", out, "raw")
    inspected = json.loads(sh(engine, "image", "inspect", name).stdout)[0]
    assert inspected["Id"].removeprefix("sha256:") == result["image_id"]


def _layer_members(layout: Path) -> list[tarfile.TarInfo]:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / index["manifests"][0]["digest"].split(":")[1]).read_text())
    data = (blob / manifest["layers"][0]["digest"].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_the_layer_is_the_kubevirt_convention_and_reproducible(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "in.qcow2")
    first = cdisk("build", "--json", "--output", f"oci:{tmp_path / 'a'}", disk, "localhost/x:1",
                  env={"SOURCE_DATE_EPOCH": "0"})
    second = cdisk("build", "--json", "--output", f"oci:{tmp_path / 'b'}", disk, "localhost/x:1",
                   env={"SOURCE_DATE_EPOCH": "0"})
    assert first.code == second.code == 0, first.err + second.err
    assert _json(first)["image_id"] == _json(second)["image_id"]
    assert _json(first)["layer_digest"] == _json(second)["layer_digest"]
    assert _json(first)["layer_compression"] == "gzip"
    for one, other in zip(sorted((tmp_path / "a").rglob("*")), sorted((tmp_path / "b").rglob("*")), strict=True):
        assert one.relative_to(tmp_path / "a") == other.relative_to(tmp_path / "b")
        assert one.is_dir() or one.read_bytes() == other.read_bytes()
    members = _layer_members(tmp_path / "a")
    assert [(m.name, m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members] == [
        ("disk", tarfile.DIRTYPE, 0o555, 107, 107, "qemu", "qemu", 0),
        ("disk/disk.img", tarfile.REGTYPE, 0o444, 107, 107, "qemu", "qemu", 0)]
    assert members[1].size == disk.stat().st_size
    assert members[1].offset_data == 4096, "the disk's data on a block: a file system can clone them"
    assert list(members[1].pax_headers) == ["comment"]


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64/v8"])
def test_the_image_id_is_the_same_in_every_store(tmp_path: Path, names: list[tuple[str, str]], platform: str) -> None:
    """The config's digest is the ID podman gives the image, and stays it through podman 5's save (which decodes
    and encodes the config again, in image-spec 1.1's order); podman 4.x's save encodes variant before os (its
    image-spec 1.1.0-rc2): other bytes where there is a variant. The layer's compression does not change it."""
    disk = make_disk(tmp_path / "in.qcow2")
    name = _name(names)
    loaded = cdisk("build", "--json", "--platform", platform, "--label", "a=<b&c> é", disk, name)
    written = cdisk("build", "--json", "--platform", platform, "--label", "a=<b&c> é", "--layer-compression", "zstd",
                    "--output", f"oci:{tmp_path / 'layout'}", disk, name)
    assert loaded.code == written.code == 0, loaded.err + written.err
    assert _json(loaded)["image_id"] == _json(written)["image_id"]
    saved = tmp_path / "saved"
    sh("podman", "save", "--quiet", "--format", "oci-dir", "-o", saved, name)
    index = json.loads((saved / "index.json").read_text())
    manifest = json.loads((saved / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = (saved / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes()
    assert sh("podman", "image", "inspect", "--format", "{{.Id}}", name).stdout.strip() == _json(loaded)["image_id"]
    if "/v" in platform and podman_major() < 5:
        assert config.index(b'"variant"') < config.index(b'"os"')
        assert manifest["config"]["digest"] != f"sha256:{_json(loaded)['image_id']}"
    else:
        assert manifest["config"]["digest"] == f"sha256:{_json(loaded)['image_id']}"


@pytest.mark.needs("skopeo")
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("transport", ["oci", "oci-archive", "docker-archive"])
def test_every_output_is_read_by_skopeo_and_cdisk(tmp_path: Path, transport: str, compression: str) -> None:
    disk = make_disk(tmp_path / "in.raw", "raw", "8M")
    path = tmp_path / ("layout" if transport == "oci" else "image.tar")
    built = cdisk("build", "-q", "--output", f"{transport}:{path}", "--layer-compression", compression, disk,
                  "localhost/out:2")
    assert built.code == 0, built.err
    inspected = sh("skopeo", "inspect", "--raw" if transport != "docker-archive" else "--config",
                   f"{transport}:{path}")
    assert inspected.returncode == 0
    out = tmp_path / "out.raw"
    converted = cdisk("convert", "-q", f"{transport}:{path}", out)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "raw", out, "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.raw", path.name, "out.raw"])
    if transport != "oci":
        with tarfile.open(path) as archive:
            layer = max(archive.getmembers(), key=lambda m: m.size)
        assert layer.offset_data % 4096 == 0, "the layer's data on a block: a file system can clone them"


def test_formats_on_the_way_in(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "in.qcow2")
    vmdk = tmp_path / "in.vmdk"
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", disk, vmdk)
    for args, source, fmt in ((["--format", "raw"], disk, "raw"), (["-c"], disk, "qcow2"), ([], vmdk, "qcow2")):
        layout = tmp_path / f"l-{fmt}-{len(args)}-{source.suffix}"
        built = cdisk("build", "--json", "--output", f"oci:{layout}", *args, source, "localhost/f:1")
        assert built.code == 0, built.err
        assert _json(built)["format"] == fmt
        out = tmp_path / "out.raw"
        assert cdisk("convert", "-q", "-f", f"oci:{layout}", out).code == 0
        assert same_disk(disk, "qcow2", out, "raw")


def test_config_carries_platform_labels_and_kubevirt_hints(tmp_path: Path, names: list[tuple[str, str]]) -> None:
    disk = make_disk(tmp_path / "in.qcow2")
    name = _name(names)
    built = cdisk("build", "-q", "--platform", "linux/arm64/v8", "--label", "org.example/os=fedora <40>",
                  "--label", "empty=", "--instancetype", "u1.medium", "--preference", "fedora", disk, name)
    assert built.code == 0, built.err
    inspected = json.loads(sh("podman", "image", "inspect", name).stdout)[0]
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "arm64")
    assert inspected["Labels"] == {"org.example/os": "fedora <40>", "empty": ""}
    assert "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium" in inspected["Config"]["Env"]
    assert "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora" in inspected["Config"]["Env"]


def test_refusals_leave_nothing(tmp_path: Path) -> None:
    backed = tmp_path / "backed.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", backed, "8M")
    refused = cdisk("build", "-q", "--output", f"oci:{tmp_path / 'o'}", backed, "localhost/r:1")
    assert_one_line_error(refused, 5, "backing file")
    disk = make_disk(tmp_path / "in.qcow2")
    (tmp_path / "taken").mkdir()
    for args, code in ((["--output", f"oci:{tmp_path / 'taken'}"], 6), (["--output", "tar:x"], 2),
                       (["--output", f"oci:{tmp_path / 'absent' / 'x'}"], 6),
                       (["--label", "novalue"], 2), (["--label", "k=a\tb"], 2), (["--format", "raw", "-c"], 2),
                       (["--platform", "linux"], 2), (["--push", "Upper/x"], 2),
                       (["--platform", "linux/amd64", "--platform", "linux/arm64", "--push", "localhost/p:1",
                         "--output", f"docker-archive:{tmp_path / 'd.tar'}"], 2)):
        run = cdisk("build", "-q", *args, disk, "localhost/r:1")
        assert_one_line_error(run, code)
    for name in ("Upper/x:1", "x:", "a b", "x@sha256:00", ""):
        run = cdisk("build", "-q", disk, name)
        assert run.code == 2 and "lowercase" in run.err, (name, run.err)
    missing = cdisk("build", "-q", tmp_path / "absent.qcow2", "localhost/r:1")
    assert missing.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backed.qcow2", "in.qcow2", "taken"]
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.needs("skopeo")
@pytest.mark.parametrize("transport", ["oci", "oci-archive", "docker-archive"])
def test_a_disk_past_8_gib_takes_a_pax_size(tmp_path: Path, transport: str) -> None:
    disk = tmp_path / "big.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", disk, "9G")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 8G 64k", disk)
    path = tmp_path / "image"
    built = cdisk("build", "-q", "--layer-compression", "none", "--output", f"{transport}:{path}", disk,
                  "localhost/b:1", timeout=300)
    assert built.code == 0, built.err
    files = list(path.rglob("*")) if path.is_dir() else [path]
    assert sum(f.stat().st_blocks for f in files if f.is_file()) * 512 < 16 << 20, "the holes are kept"
    assert sh("skopeo", "inspect", f"{transport}:{path}", check=False).returncode == 0
    out = tmp_path / "out.raw"
    converted = cdisk("convert", "-q", f"{transport}:{path}", out, timeout=300)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "raw", out, "raw")


def test_the_temp_dir_on_another_file_system(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here")
    disk = make_disk(tmp_path / "in.raw", "raw", "8M")
    work = Path(tempfile.mkdtemp(dir=other))
    try:
        built = cdisk("build", "-q", "--layer-compression", "none", "--tmpdir", work, "--output",
                      f"oci-archive:{tmp_path / 'x.tar'}", disk, "localhost/x:1")
        assert built.code == 0, built.err
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(work)
    out = tmp_path / "out.raw"
    assert cdisk("convert", "-q", f"oci-archive:{tmp_path / 'x.tar'}", out).code == 0
    assert same_disk(disk, "raw", out, "raw")


def test_source_date_epoch(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "in.qcow2")
    built = cdisk("build", "-q", "--output", f"oci:{tmp_path / 'l'}", disk, "localhost/x:1",
                  env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert built.code == 0, built.err
    assert {m.mtime for m in _layer_members(tmp_path / "l")} == {1700000000}
    for wrong in ("soon", "²", "8589934592", "-1"):
        refused = cdisk("build", "-q", "--output", f"oci:{tmp_path / 'w'}", disk, "localhost/x:1",
                        env={"SOURCE_DATE_EPOCH": wrong})
        assert refused.code == 2 and "SOURCE_DATE_EPOCH" in refused.err, wrong


@pytest.mark.needs("docker-registry")
@pytest.mark.parametrize(("builder", "puller"), [("podman", "docker"), ("docker", "podman")])
def test_pushed_by_one_engine_pulled_by_the_other(request: pytest.FixtureRequest, tmp_path: Path, registry: str,
                                                   names: list[tuple[str, str]], builder: str, puller: str) -> None:
    request.getfixturevalue("docker_host")
    disk = make_disk(tmp_path / "in.qcow2")
    name = _name(names, builder)
    ref = f"{registry}/cdisk/built-{uuid.uuid4().hex[:8]}:1"
    names.append((puller, ref))
    built = cdisk("build", "-q", "--engine", builder, "--push", ref, "--tls-verify", "false", disk, name)
    assert built.code == 0, built.err
    # Pushed under its own name: the image keeps it (docker's tag-push-untag must not take it away).
    own = f"{registry}/cdisk/own-{uuid.uuid4().hex[:8]}"
    names.append((builder, own))
    again = cdisk("build", "-q", "--engine", builder, "--push", own, "--tls-verify", "false", disk, own)
    assert again.code == 0, again.err
    assert sh(builder, "image", "inspect", own).returncode == 0
    out = tmp_path / "out.raw"
    converted = cdisk("convert", "-q", "--engine", puller, "--pull", "always", "--tls-verify", "false", ref, out)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "qcow2", out, "raw")


@pytest.mark.needs("docker-registry", "skopeo")
def test_several_platforms_push_an_index(tmp_path: Path, registry: str, names: list[tuple[str, str]]) -> None:
    disk = make_disk(tmp_path / "in.qcow2")
    ref = f"{registry}/cdisk/multi-{uuid.uuid4().hex[:8]}:1"
    names.append(("podman", ref))
    built = cdisk("build", "--json", "--platform", "linux/amd64", "--platform", "linux/arm64", "--push", ref,
                  "--tls-verify", "false", disk, "localhost/multi:1")
    assert built.code == 0, built.err
    assert _json(built)["platforms"] == ["linux/amd64", "linux/arm64"] and _json(built)["destination"] == "push"
    index = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    out = tmp_path / "out.raw"
    converted = cdisk("convert", "-q", "--platform", "linux/arm64", "--pull", "always", "--tls-verify", "false",
                      ref, out)
    assert converted.code == 0, converted.err
    assert same_disk(disk, "qcow2", out, "raw")
    kept = tmp_path / "layout"
    assert cdisk("build", "-q", "--platform", "linux/amd64", "--platform", "linux/arm64", "--output",
                 f"oci:{kept}", disk, "localhost/multi:1").code == 0
    assert cdisk("convert", "-q", "-f", "--platform", "linux/arm64", f"oci:{kept}", out).code == 0
    refused = cdisk("build", "-q", "--platform", "linux/amd64", "--platform", "linux/arm64", disk, "localhost/m:1")
    assert refused.code == 2 and "--push" in refused.err


def test_build_of_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "disk")
    result = cdisk("build", "-q", "--output", f"oci:{tmp_path / 'out'}", tmp_path / "disk", "localhost/x:1",
                   timeout=30)
    assert result.code == 2 and "is not a regular file" in result.err and result.err.count("\n") == 1, result.err



# --- what is plainly not a disk ----------------------------------------------------------------------------

# kind: what the refusal calls it, and the fix it names
NOT_DISKS = {"xz": ("xz-compressed", "xz -d"), "gzip": ("gzip-compressed", "gzip -d"),
             "zstd": ("zstd-compressed", "zstd -d"), "bzip2": ("bzip2-compressed", "bzip2 -d"),
             "lz4": ("lz4-compressed", "lz4 -d"), "tar": ("a tar archive", "tar -xf"),
             "zip": ("a zip archive", "unzip"), "text": ("text", "give a disk image")}


def _compressed_by_python(kind: str, data: bytes) -> bytes:
    if kind == "lz4":  # no lz4 in Python: a frame's magic and descriptor, as `lz4` starts one
        return b"\x04\x22\x4d\x18\x64\x40\xa7" + data
    return {"xz": lzma.compress, "gzip": gzip.compress, "zstd": zstd.compress, "bzip2": bz2.compress}[kind](data)


def _not_a_disk(kind: str, disk: Path) -> Path:
    """DISK made into `kind` by the real tool (by Python's own writer of the format where the tool is missing)."""
    out = disk.with_name(f"{disk.name}.{kind}")
    if kind == "tar":
        sh("tar", "-cf", out, "-C", disk.parent, disk.name)
    elif kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(disk, disk.name)
    elif kind == "text":
        out.write_text("#version=RHEL9\ntext\nlang en_US.UTF-8\nrootpw --lock\n%packages\n@core\n%end\n")
    elif shutil.which(kind):
        with out.open("wb") as file:
            subprocess.run([kind, "-c", disk], stdout=file, check=True)
    else:
        out.write_bytes(_compressed_by_python(kind, disk.read_bytes()))
    return out


def _exists(name: str, engine: str = "podman") -> bool:
    return sh(engine, "image", "exists", name, check=False).returncode == 0


@pytest.mark.parametrize("kind", list(NOT_DISKS))
def test_what_is_plainly_not_a_disk_is_refused_and_raw_builds_it(tmp_path: Path, names: list[tuple[str, str]],
                                                                  kind: str) -> None:
    disk = make_disk(tmp_path / "in.qcow2", "qcow2", "4M")
    source = _not_a_disk(kind, disk)
    name, work = _name(names), tmp_path / "work"
    work.mkdir()
    what, fix = NOT_DISKS[kind]
    refused = cdisk("build", "-q", "--tmpdir", work, source, name)
    assert_one_line_error(refused, 2, f"DISK {source} is {what}, not a disk; ")
    assert fix in refused.err and "--raw" in refused.err, refused.err
    assert not _exists(name), "nothing is loaded into the engine"
    assert list(work.iterdir()) == [], "no temp dir is left"
    link = tmp_path / "disk.img"  # named as a disk, through a symlink: its bytes are what count
    link.symlink_to(source)
    assert_one_line_error(cdisk("build", "-q", "--output", f"oci:{tmp_path / 'o'}", link, name), 2,
                          f"DISK {link} is {what}, not a disk; ")
    assert not (tmp_path / "o").exists()
    # --raw: the operator says it is a raw disk; its size must still be whole sectors.
    os.truncate(source, -(-source.stat().st_size // 512) * 512)
    layout = tmp_path / "layout"
    built = cdisk("build", "--json", "--raw", "--output", f"oci:{layout}", source, name)
    assert built.code == 0, built.err
    assert (_json(built)["format"], _json(built)["iso9660"]) == ("raw", False)
    out = tmp_path / "out.raw"
    assert cdisk("convert", "-q", f"oci:{layout}", out).code == 0
    assert same_disk(source, "raw", out, "raw")


def test_an_empty_disk_and_a_partial_sector_are_refused_even_with_raw(tmp_path: Path,
                                                                       names: list[tuple[str, str]]) -> None:
    empty, odd = tmp_path / "empty.raw", tmp_path / "odd sized.raw"
    empty.touch()
    sh("qemu-img", "create", "-q", "-f", "raw", odd, "1M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", odd)
    with odd.open("ab") as file:
        file.write(b"\x5a" * 100)
    name = _name(names)
    for args in ([], ["--raw"]):
        refused = cdisk("build", "-q", *args, empty, name)
        assert_one_line_error(refused, 2, f"DISK {empty} is empty (0 bytes), not a disk; give a disk image")
        refused = cdisk("build", "-q", *args, odd, name)
        assert_one_line_error(refused, 2, f"DISK {odd} is {(1 << 20) + 100} bytes, not a multiple of 512 (qemu "
                                          f"would read a partial sector); pad it with zeros first: truncate -s "
                                          f"%512 '{odd}'")
        assert not _exists(name)
    sh("truncate", "-s", "%512", odd)  # the fix the refusal names
    built = cdisk("build", "--json", odd, name)
    assert built.code == 0, built.err
    assert _exists(name) and _json(built)["virtual_size"] == (1 << 20) + 512
    qcow2 = make_disk(tmp_path / "in.qcow2", "qcow2", "4M")
    refused = cdisk("build", "-q", "--raw", qcow2, name)
    assert_one_line_error(refused, 2, f"--raw: DISK {qcow2} is a qcow2 disk by its header, not raw; drop --raw")


def test_an_iso_9660_image_is_built_as_raw(tmp_path: Path) -> None:
    """An ISO is a raw image a VM boots as a CD-ROM (KubeVirt serves a containerDisk's ISO to a cdrom disk):
    built, and the summary says to attach it as one."""
    iso = tmp_path / "boot.iso"
    sh("qemu-img", "create", "-q", "-f", "raw", iso, str(2048 * 512))
    with iso.open("r+b") as file:  # the primary volume descriptor at sector 16, the set's terminator after it
        file.seek(16 * 2048)
        file.write(b"\x01CD001\x01\x00" + b"LINUX".ljust(32) + b"CDISK_TEST".ljust(32))
        file.seek(17 * 2048)
        file.write(b"\xffCD001\x01")
    layout = tmp_path / "layout"
    built = cdisk("build", "--output", f"oci:{layout}", iso, "localhost/iso:1")
    assert built.code == 0, built.err
    assert ": raw disk of 1048576 bytes (an ISO 9660 image: attach it to the VM as a cdrom disk)" in built.out
    as_json = cdisk("build", "--json", "--output", f"oci:{tmp_path / 'again'}", iso, "localhost/iso:1")
    assert (_json(as_json)["format"], _json(as_json)["iso9660"]) == ("raw", True)
    out = tmp_path / "out.raw"
    assert cdisk("convert", "-q", f"oci:{layout}", out).code == 0
    assert same_disk(iso, "raw", out, "raw")


def test_real_disks_still_build(tmp_path: Path, names: list[tuple[str, str]]) -> None:
    raw = tmp_path / "in.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", raw, "1M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4k", "-c", "write -P 0xa5 1020k 4k", raw)
    for disk, fmt in ((raw, "raw"), (make_disk(tmp_path / "in.qcow2", "qcow2", "4M"), "qcow2")):
        name = _name(names)
        built = cdisk("build", "--json", disk, name)
        assert built.code == 0, built.err
        assert (_json(built)["format"], _json(built)["iso9660"]) == (fmt, False)
        out = tmp_path / f"out-{fmt}.raw"
        assert cdisk("convert", "-q", name, out).code == 0
        assert same_disk(disk, fmt, out, "raw")
