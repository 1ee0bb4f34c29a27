"""The documents of a one-layer containerDisk (config, manifest, index) and the files they travel in: an OCI
layout directory, an OCI archive, a docker archive. Every JSON document is written as Go's encoding/json writes
the image-spec structs (their field order, maps sorted, no spaces, <>& escaped) and dated by the build's fixed
time: the same layer and switches give the same bytes, hence the same IDs — and an engine that decodes and
encodes the config again (podman save does) gets the very bytes back, so the image ID holds everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cdisk.core.build.layer import BLOCK, Layer
from cdisk.core.errors import TargetError

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
# What quay.io/containerdisks images carry to tell KubeVirt their default instancetype and preference.
INSTANCETYPE_ENV = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE"
PREFERENCE_ENV = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """What the config says besides the layer: the platform, labels, environment (KubeVirt's hints)."""

    platform: Platform = Platform()
    labels: dict[str, str] = field(default_factory=dict)
    env: tuple[str, ...] = ()
    created: int = 0


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def canonical(document: object) -> bytes:
    """`document` as Go's json.Marshal writes it; its dicts must be in the Go structs' field order (a label map
    is sorted here, as Go sorts map keys)."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in _GO_ESCAPES.items():  # only ever inside strings: JSON's own syntax has none of them
        text = text.replace(char, escaped)
    return text.encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def config(spec: ImageSpec, layer: Layer) -> bytes:
    """The image config: its digest is the image ID podman and docker give the image."""
    # image-spec's Image: created, architecture, os, variant (its Platform's order), config, rootfs, history.
    document: dict[str, object] = {"created": _when(spec.created), "architecture": spec.platform.architecture,
                                   "os": spec.platform.os}
    if spec.platform.variant:
        document["variant"] = spec.platform.variant
    settings: dict[str, object] = {}  # ImageConfig: Env before Labels
    if spec.env:
        settings["Env"] = list(spec.env)
    if spec.labels:
        settings["Labels"] = dict(sorted(spec.labels.items()))
    document |= {"config": settings, "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                 "history": [{"created": _when(spec.created), "created_by": "cdisk build"}]}
    return canonical(document)


def descriptor(media_type: str, digest: str, size: int, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def manifest(config_bytes: bytes, layer: Layer) -> bytes:
    return canonical({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                      "config": descriptor(CONFIG_TYPE, digest_of(config_bytes), len(config_bytes)),
                      "layers": [descriptor(layer.media_type, layer.digest, layer.size)]})


@dataclass(frozen=True)
class Built:
    """A built image's documents, and the file holding its layer blob."""

    config: bytes
    manifest: bytes
    layer: Layer
    layer_path: str
    platform: Platform = Platform()

    @property
    def image_id(self) -> str:
        return digest_of(self.config).removeprefix("sha256:")


def _blob_name(digest: str) -> str:
    return os.path.join("blobs", "sha256", digest.removeprefix("sha256:"))


def _platform(platform: Platform) -> dict[str, str]:
    found = {"architecture": platform.architecture, "os": platform.os}
    return found | ({"variant": platform.variant} if platform.variant else {})


def platform_index(builts: list[Built]) -> bytes:
    """The image index of one disk built for several platforms (what a multi-arch tag points at)."""
    return canonical({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        descriptor(MANIFEST_TYPE, digest_of(b.manifest), len(b.manifest), platform=_platform(b.platform))
        for b in builts]})


def _layout_files(builts: list[Built], name: str) -> list[tuple[str, bytes | str]]:
    """The OCI layout's files in a fixed order: (path, bytes, or the path of a file to copy). One platform: the
    layout's index names its manifest; several: it names their image index."""
    files: list[tuple[str, bytes | str]] = []
    if len(builts) == 1:
        top = descriptor(MANIFEST_TYPE, digest_of(builts[0].manifest), len(builts[0].manifest),
                         annotations={REF_NAME: name})
    else:
        index = platform_index(builts)
        top = descriptor(INDEX_TYPE, digest_of(index), len(index), annotations={REF_NAME: name})
        files.append((_blob_name(digest_of(index)), index))
    files = [("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
             ("index.json", canonical({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [top]})), *files]
    for built in builts:
        files += [(_blob_name(digest_of(built.manifest)), built.manifest),
                  (_blob_name(digest_of(built.config)), built.config)]
    return [*files, (_blob_name(builts[0].layer.digest), builts[0].layer_path)]


def _docker_files(built: Built, name: str) -> list[tuple[str, bytes | str]]:
    config_name = digest_of(built.config).removeprefix("sha256:") + ".json"
    layer_name = built.layer.diff_id.removeprefix("sha256:") + "/layer.tar"
    return [(config_name, built.config), (layer_name, built.layer_path),
            ("manifest.json", canonical([{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]))]


@contextmanager
def _new_path(path: str, kind: str) -> Iterator[str]:
    """A temp name beside `path`, renamed to it when the block ends well (and removed otherwise); `path` must not
    exist."""
    if os.path.lexists(path):
        raise TargetError(f"{path} exists; remove it or choose another {kind}")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise TargetError(f"{directory} does not exist; create it or choose another {kind}")
    temp = os.path.join(directory, f".{os.path.basename(path)}.cdisk-part")
    try:
        yield temp
        if os.path.lexists(path):
            raise TargetError(f"{path} appeared meanwhile; remove it or choose another {kind}")
        os.rename(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(temp) and not os.path.islink(temp):
                shutil.rmtree(temp)
            else:
                os.unlink(temp)


def _copy_file(source: str, out: int) -> None:
    """Append `source` to `out`, keeping its holes (an uncompressed layer's zeros) as holes."""
    with open(source, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        start = os.lseek(out, 0, os.SEEK_CUR)
        offset = 0
        while offset < size:
            try:
                data = min(os.lseek(src.fileno(), offset, os.SEEK_DATA), size)
                end = min(os.lseek(src.fileno(), data, os.SEEK_HOLE), size)
            except OSError:
                data, end = size, size
            while data < end:
                copied = os.copy_file_range(src.fileno(), out, end - data, data, start + data)
                if copied == 0:
                    raise OSError(f"{source} ended early")
                data += copied
            offset = end
        if os.fstat(out).st_size < start + size:  # it ended in a hole
            os.ftruncate(out, start + size)
        os.lseek(out, start + size, os.SEEK_SET)


def write_layout(builts: list[Built], name: str, path: str) -> None:
    """An OCI layout directory at `path` (new), the image (or index of images) named `name` in its index."""
    with _new_path(path, "oci: directory") as temp:
        os.mkdir(temp)
        os.makedirs(os.path.join(temp, "blobs", "sha256"))
        for member, content in _layout_files(builts, name):
            target = os.path.join(temp, member)
            if isinstance(content, bytes):
                with open(target, "wb") as f:
                    f.write(content)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    _copy_file(content, fd)
                finally:
                    os.close(fd)


def _tar_header(name: str, size: int, directory: bool = False) -> bytes:
    """A plain ustar header of an archive member (root-owned, mode 0644/0755, mtime 0)."""
    block = bytearray(BLOCK)
    block[0:len(name)] = name.encode()
    block[100:108] = b"%07o\0" % (0o755 if directory else 0o644)
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % (0 if directory else size)
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = b"5" if directory else b"0"
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _write_archive(files: list[tuple[str, bytes | str]], path: str) -> None:
    with _new_path(path, "archive") as temp:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            directories: set[str] = set()
            for member, content in files:
                for parent in reversed(_parents(member)):  # each directory once, before its files
                    if parent not in directories:
                        _write_all(fd, _tar_header(parent + "/", 0, directory=True))
                        directories.add(parent)
                size = len(content) if isinstance(content, bytes) else os.stat(content).st_size
                _write_all(fd, _tar_header(member, size))
                if isinstance(content, bytes):
                    _write_all(fd, content)
                else:
                    _copy_file(content, fd)
                _write_all(fd, bytes(-size % BLOCK))
            _write_all(fd, bytes(2 * BLOCK))
        finally:
            os.close(fd)


def _parents(path: str) -> list[str]:
    found = []
    while (path := os.path.dirname(path)):
        found.append(path)
    return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_oci_archive(builts: list[Built], name: str, path: str) -> None:
    """An OCI layout in one tar at `path` (new)."""
    _write_archive(_layout_files(builts, name), path)


def write_docker_archive(builts: list[Built], name: str, path: str) -> None:
    """A `docker save` archive at `path` (new): what `docker load` and `podman load` read (one platform)."""
    [built] = builts
    _write_archive(_docker_files(built, name), path)


def temp_blob(directory: str) -> tuple[int, str]:
    """A new file for the layer blob in `directory`."""
    return tempfile.mkstemp(prefix=".cdisk-layer-", dir=directory)
