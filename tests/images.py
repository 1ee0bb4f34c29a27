"""Real test images: tiny disks made by qemu-img, put in podman's (or docker's) store by `podman build`
(`docker build`) or, for layer tricks a Containerfile cannot express (whiteouts, hard links, symlinks), by
pulling an OCI layout (`docker load` of a docker-archive) whose layer tars are written here with `tarfile`,
or byte by byte (`tar_member`, `pax_header`, … for the odd constructs no tar library writes) and loaded with
`oci_image_blobs` (`docker_image_blobs`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1 << 20


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True)


def make_disk(path: Path, fmt: str = "qcow2", size: str = "8M", pattern: int = 0xAB, *extra: str) -> Path:
    """A small disk with a known pattern at a few offsets (so a wrong offset cannot compare equal)."""
    sh("qemu-img", "create", "-q", "-f", fmt, *extra, path, size)
    for offset, length in ((0, "64k"), ("1M", "4k"), ("3M", "128k")):
        sh("qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path)
    return path


def big_disk(path: Path, fmt: str = "qcow2", pattern: int = 0xAB) -> Path:
    """A disk file of more than 1 MiB (the least a search outside /disk/ looks at): 8 MiB, 2 MiB of it written."""
    sh("qemu-img", "create", "-q", "-f", fmt, path, "8M")
    sh("qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 2M", "-c", f"write -P {pattern + 1} 6M 64k", path)
    return path


def gpt_disk(path: Path, size: int = 2 * MiB) -> Path:
    """A raw disk as `sgdisk -o` leaves it: a protective MBR (one partition of type 0xEE, 0x55AA) and a GPT
    header ("EFI PART" at 512); a pattern further on, so a wrong offset cannot compare equal."""
    data = bytearray(size)
    data[446:462] = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + (1).to_bytes(4, "little") \
        + (size // 512 - 1).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    data[512:520] = b"EFI PART"
    data[MiB:MiB + 4096] = b"\x5a" * 4096
    path.write_bytes(bytes(data))
    return path


def podvm_layers(disk: bytes, at: str = "image/podvm.qcow2", above: int = 1) -> list[list[Entry]]:
    """The layers of an image laid out as confidential-containers' podvm images are: a busybox-ish base (/bin,
    /etc, files of over 1 MiB that are no disks: an ELF of whole sectors, a run of zeros), the disk at `at` in a
    layer of its own, and `above` small layers over it (one replaces /etc/hostname, one whites out a file)."""
    elf = b"\x7fELF\x02\x01\x01" + bytes(MiB + 512 - 7)
    base = [Entry("bin/", directory=True), Entry("bin/busybox", elf), Entry("bin/sh", symlink="busybox"),
            Entry("etc/", directory=True), Entry("etc/hostname", b"base\n"), Entry("etc/motd", b"hi\n"),
            Entry("usr/", directory=True), Entry("usr/share/", directory=True),
            Entry("usr/share/zeros.bin", bytes(2 * MiB)), Entry("tmp/", directory=True)]
    parent = at.rpartition("/")[0]
    layers = [base, [*([Entry(f"{parent}/", directory=True)] if parent else []), Entry(at, disk)]]
    for n in range(above):
        layers.append([Entry("etc/", directory=True), Entry("etc/hostname", f"podvm-{n}\n".encode())]
                      + ([Entry("etc/.wh.motd", b"")] if n == 0 else []))
    return layers


# The names a test session gives its images, a line each, in a file the session holds locked (conftest): a
# session killed before its end leaves the file, and the next removes the images it names. Unset in the scripts.
_ledger: list[int] = []


def keep_ledger(fd: int | None) -> None:
    _ledger[:] = [] if fd is None else [fd]


def record_image(name: str) -> None:
    """`name` (an image's, or a repository's: every image of it) in the session's ledger, before it exists."""
    if _ledger:
        os.write(_ledger[0], f"{name}\n".encode())


def unique_name(tag: str = "latest") -> str:
    name = f"localhost/cdisk-test-{uuid.uuid4().hex[:12]}:{tag}"
    record_image(name)
    return name


def podman_build(context: Path, files: dict[str, Path], dest: str = "/disk/", engine: str = "podman") -> str:
    """`podman build` (or `docker build`) a FROM-scratch containerDisk holding `files` (name in context -> source).
    """
    lines = ["FROM scratch"]
    for name, source in files.items():
        (context / name).write_bytes(source.read_bytes())
        lines.append(f"COPY --chown=107:107 [{json.dumps(name)}, {json.dumps(dest)}]")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    return build_context(context, engine)


def build_context(context: Path, engine: str = "podman") -> str:
    """Build `context` (its Containerfile) with `engine`, without a build cache: every test has an image of its
    own (one ID, one layer no other test's mounts share). Its name."""
    name = unique_name()
    if engine == "docker":
        # The classic builder: Debian's docker.io has no buildx.
        subprocess.run(["docker", "build", "-q", "--no-cache", "-t", name, "-f", str(context / "Containerfile"),
                        str(context)], check=True, capture_output=True, text=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "0"})
    else:
        sh("podman", "build", "-q", "--layers=false", "-t", name, "-f", context / "Containerfile", context)
    return name


@dataclass
class Entry:
    """One member of a hand-written layer: a file (data), a directory, a symlink or a hard link."""

    path: str
    data: bytes | None = None
    symlink: str | None = None
    hardlink: str | None = None
    directory: bool = False


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.uid = info.gid = 107
            if entry.directory:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif entry.symlink is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.symlink
                tar.addfile(info)
            elif entry.hardlink is not None:
                info.type, info.linkname = tarfile.LNKTYPE, entry.hardlink
                tar.addfile(info)
            else:
                data = entry.data or b""
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR_END = bytes(1024)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def tar_header(name: bytes | str, kind: bytes = b"0", size: int = 0, linkname: bytes | str = b"",
               magic: bytes = b"ustar\x00", version: bytes = b"00", prefix: bytes = b"",
               fields: dict[int, bytes] | None = None, devices: tuple[int, int] = (0, 0)) -> bytes:
    """One 512-byte header block with a valid checksum; `fields` overwrite bytes at given offsets."""
    block = bytearray(512)

    def put(offset: int, data: bytes) -> None:
        block[offset:offset + len(data)] = data

    put(0, (name.encode() if isinstance(name, str) else name)[:100])
    put(100, b"0000644\x00")
    put(108, b"0000153\x00")
    put(116, b"0000153\x00")
    put(124, b"%011o\x00" % size)
    put(136, b"14000000000\x00")
    put(156, kind)
    put(157, linkname.encode() if isinstance(linkname, str) else linkname)
    put(257, magic)
    put(263, version)
    put(329, b"%07o\x00" % devices[0])
    put(337, b"%07o\x00" % devices[1])
    put(345, prefix)
    for offset, data in (fields or {}).items():
        put(offset, data)
    block[148:156] = b" " * 8
    put(148, b"%06o\x00 " % sum(block))
    return bytes(block)


def tar_member(name: bytes | str, data: bytes = b"", kind: bytes = b"0", **header: Any) -> bytes:
    """A header and its data, padded to the block."""
    return tar_header(name, kind, len(data), **header) + _pad(data)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_header(records: list[tuple[bytes, bytes]] | bytes, kind: bytes = b"x",
               name: bytes = b"PaxHeaders/member") -> bytes:
    """A PAX extended (`x`) or global (`g`) header, from records or a raw body."""
    body = records if isinstance(records, bytes) else b"".join(pax_record(k, v) for k, v in records)
    return tar_header(name, kind, len(body)) + _pad(body)


def gnu_long(value: bytes, kind: bytes = b"L") -> bytes:
    """A GNU long name (`L`) or long link (`K`) header for the next member."""
    data = value + b"\x00"
    return tar_header(b"././@LongLink", kind, len(data), magic=b"ustar ", version=b" \x00") + _pad(data)


def oci_image(workdir: Path, layers: list[list[Entry]]) -> str:
    """Put an image with exactly these layers into podman's store (via `podman pull oci:`)."""
    return oci_image_blobs(workdir, [layer_tar(entries) for entries in layers])


def oci_image_blobs(workdir: Path, tars: list[bytes]) -> str:
    """Put an image whose layers are exactly these tar blobs into podman's store.

    Raises subprocess.CalledProcessError when podman refuses to pull it.
    """
    layout, _ = oci_layout(workdir, tars)
    image_id = sh("podman", "pull", "-q", f"oci:{layout}").stdout.strip().splitlines()[-1]
    name = unique_name()
    sh("podman", "tag", image_id, name)
    sh("podman", "untag", image_id, f"localhost{layout}:latest", check=False)
    return name


def blob_store(layout: Path) -> Callable[[bytes], dict[str, object]]:
    """A function that stores a blob in the OCI layout `layout` (made) and returns its descriptor's fields."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    return blob


def oci_layout(workdir: Path, tars: list[bytes]) -> tuple[Path, str]:
    """An OCI layout (as `podman save --format oci-dir` writes) of one image with these layer blobs; its path
    and the image's ID (its config's digest, hex).
    """
    layout = workdir / f"oci-{uuid.uuid4().hex[:8]}"
    blob = blob_store(layout)
    layer_refs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(t)} for t in tars]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [ref["digest"] for ref in layer_refs]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())},
        "layers": layer_refs,
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(json.dumps(manifest).encode())}
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout, str(manifest["config"]["digest"]).removeprefix("sha256:")  # type: ignore[index]


def one_disk_layout(workdir: Path) -> tuple[Path, Path, Path]:
    """An OCI layout of one image whose one layer holds /disk/vm.img (4 KiB): its dir, its manifest blob and
    its layer blob.
    """
    layout, _ = oci_layout(workdir, [layer_tar([Entry("disk/vm.img", data=b"x" * 4096)])])
    blobs = layout / "blobs" / "sha256"
    manifest = blobs / json.loads((layout / "index.json").read_text())["manifests"][0]["digest"][7:]
    layer = blobs / json.loads(manifest.read_text())["layers"][0]["digest"][7:]
    return layout, manifest, layer


def tar_file(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tar of these members, in this order (a str is a symlink's target; a name may come twice)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def _uncompressed(blob: bytes) -> bytes:
    if blob.startswith(b"\x1f\x8b"):
        return gzip.decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        from backports import zstd

        return zstd.decompress(blob)
    return blob


def docker_archive(workdir: Path, tars: list[bytes], name: str) -> Path:
    """A docker-archive (what `docker save` writes up to Docker 24) of one image tagged `name`, with these
    layer tars: `manifest.json`, the config, and `<n>/layer.tar` each.
    """
    # A diff ID is the digest of the uncompressed tar, whatever the archive holds (docker load and skopeo check
    # a compressed layer's stream against it).
    diff_ids = [f"sha256:{hashlib.sha256(_uncompressed(t)).hexdigest()}" for t in tars]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    members = {config_name: config}
    for index, data in enumerate(tars):
        members[f"{index}/layer.tar"] = data
    members["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": [name],
                                            "Layers": [f"{i}/layer.tar" for i in range(len(tars))]}]).encode()
    archive = workdir / f"docker-{uuid.uuid4().hex[:8]}.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def docker_image_blobs(workdir: Path, tars: list[bytes]) -> str:
    """Put an image whose layers are exactly these tar blobs into docker's store (`docker load`).

    Raises subprocess.CalledProcessError when docker refuses to load it.
    """
    name = unique_name()
    sh("docker", "load", "-q", "-i", docker_archive(workdir, tars, name))
    return name


def remove_image(name: str, engine: str = "podman") -> None:
    sh(engine, "rmi", "-f", name, check=False)


EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}


def oci_artifact_layout(workdir: Path, manifests: list[tuple[list[tuple[bytes, dict[str, object]]], dict[str, object]]],
                        ) -> Path:
    """An OCI layout of disk artifacts as ORAS, KubeVirt's VM export and podman machine write them: each manifest
    has the empty config (`{}`) and layers that are the disks themselves. `manifests`: per manifest, its layers
    (blob, descriptor fields such as mediaType and annotations) and the fields of its index entry (platform,
    annotations). Several manifests are put under one image index, as a multi-arch push does.
    """
    layout = workdir / f"artifact-{uuid.uuid4().hex[:8]}"
    blob = blob_store(layout)
    blob(b"{}")
    entries = []
    for layers, entry in manifests:
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.unknown.artifact.v1",
            "config": EMPTY_CONFIG,
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(data), **fields}
                       for data, fields in layers],
        }
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **blob(json.dumps(manifest).encode()), **entry})
    if len(entries) > 1:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        entries = [{"mediaType": "application/vnd.oci.image.index.v1+json", **blob(json.dumps(index).encode())}]
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout
