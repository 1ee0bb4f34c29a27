"""Real test images: tiny disks made by qemu-img, put in podman's store by `podman build` or, for layer
tricks a Containerfile cannot express (whiteouts, hard links, symlinks), by pulling an OCI layout whose
layer tars are written here with `tarfile`.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True)


def make_disk(path: Path, fmt: str = "qcow2", size: str = "8M", pattern: int = 0xAB, *extra: str) -> Path:
    """A small disk with a known pattern at a few offsets (so a wrong offset cannot compare equal)."""
    sh("qemu-img", "create", "-q", "-f", fmt, *extra, path, size)
    for offset, length in ((0, "64k"), ("1M", "4k"), ("3M", "128k")):
        sh("qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path)
    return path


def unique_name(tag: str = "latest") -> str:
    return f"localhost/cdisk-test-{uuid.uuid4().hex[:12]}:{tag}"


def podman_build(context: Path, files: dict[str, Path], dest: str = "/disk/") -> str:
    """`podman build` a FROM-scratch containerDisk holding `files` (name in context -> source)."""
    lines = ["FROM scratch"]
    for name, source in files.items():
        (context / name).write_bytes(source.read_bytes())
        lines.append(f"COPY --chown=107:107 [{json.dumps(name)}, {json.dumps(dest)}]")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    name = unique_name()
    sh("podman", "build", "-q", "-t", name, "-f", context / "Containerfile", context)
    return name


@dataclass
class Entry:
    """One member of a hand-written layer: a file (data), a directory, a symlink or a hard link."""

    path: str
    data: bytes | None = None
    symlink: str | None = None
    hardlink: str | None = None
    directory: bool = False


def _layer_tar(entries: list[Entry]) -> bytes:
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


def oci_image(workdir: Path, layers: list[list[Entry]]) -> str:
    """Put an image with exactly these layers into podman's store (via `podman pull oci:`)."""
    layout = workdir / f"oci-{uuid.uuid4().hex[:8]}"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    tars = [_layer_tar(entries) for entries in layers]
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
    image_id = sh("podman", "pull", "-q", f"oci:{layout}").stdout.strip().splitlines()[-1]
    name = unique_name()
    sh("podman", "tag", image_id, name)
    sh("podman", "untag", image_id, f"localhost{layout}:latest", check=False)
    return name


def remove_image(name: str) -> None:
    sh("podman", "rmi", "-f", name, check=False)
