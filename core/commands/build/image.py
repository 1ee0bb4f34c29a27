"""The documents of a one-layer containerDisk (config, manifest, index) and the files they travel in: an OCI
layout directory, an OCI archive, a docker archive. Every JSON document is written as Go's encoding/json writes
the image-spec structs (their field order, maps sorted, no spaces, <>& escaped) and dated by the build's fixed
time: the same layer and switches give the same bytes, hence the same IDs — and an engine that decodes and
encodes the config again (podman save does) gets the very bytes back, so the image ID holds everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cdisk.core.commands.build.layer import BLOCK, CHUNK, Layer, data_at, member_headers, ustar_header, write_all
from cdisk.core.errors import TargetError
from cdisk.core.oci.media_types import CONFIG_TYPE, INDEX_TYPE, MANIFEST_TYPE, REF_NAME
from cdisk.core.oci.platform import Platform

# What quay.io/containerdisks images carry to tell KubeVirt their default instancetype and preference.
INSTANCETYPE_ENV = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE"
PREFERENCE_ENV = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE"


@dataclass(frozen=True)
class ImageSpec:
    """What the config says besides the layer: the platform, labels, environment (KubeVirt's hints)."""

    platform: Platform = field(default_factory=Platform)
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
    # image-spec 1.1.0's Image as Go encodes it (podman 5, skopeo 1.18 and later: what operators run): created,
    # architecture, os, variant, config, rootfs, history. (The podman of Debian 12, built with 1.1.0-rc2, puts
    # variant before os: its `podman save` re-encodes a config with a variant to other bytes, another digest;
    # those without one are the same. The image ID podman and docker give the image is this config's digest.)
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
    platform: Platform = field(default_factory=Platform)

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
def _new_path(path: str, kind: str, directory: bool = False) -> Iterator[tuple[str, int]]:
    """A new temp file or directory of our own beside `path` and its held descriptor, renamed to it when the block
    ends well (and removed otherwise); `path` must not exist. A file is written through the descriptor.

    Held under its lock while the block runs, under a name the next run beside it removes if a SIGKILL left it
    (`leftovers`: `.NAME.XXXXXXXX.cdisk-part`, a directory `….cdisk-dir`).
    """
    from cdisk.core import leftovers
    from cdisk.core.target import temp_prefix

    if os.path.lexists(path):
        raise TargetError(f"{path} exists; remove it or choose another {kind}")
    parent = os.path.dirname(path) or "."
    leftovers.sweep(parent, leftovers.BESIDE_TARGET)
    prefix = temp_prefix(parent, os.path.basename(path))
    try:
        if directory:
            held, temp = leftovers.locked_dir(parent, prefix, ".cdisk-dir")
        else:
            held, temp = leftovers.locked_file(parent, prefix, ".cdisk-part")
    except OSError as error:
        raise TargetError(f"cannot write {kind} {path}: {error.strerror}; choose another") from None
    renamed = False
    try:
        os.fchmod(held, 0o755 if directory else 0o644)  # through the descriptor: the name may be another's by now
        yield temp, held
        if directory:
            os.unlink(leftovers.MARK, dir_fd=held)  # the sweep's mark is no part of the layout
        if os.path.lexists(path):
            raise TargetError(f"{path} appeared meanwhile; remove it or choose another {kind}")
        if not leftovers.still_named(held, temp):
            raise TargetError(f"{temp} was replaced while cdisk wrote it; write {kind} {path} in a directory only "
                              "you may write in")
        os.rename(temp, path)
        renamed = True
    finally:
        try:
            if not renamed and leftovers.still_named(held, temp):  # never what another put in its place
                with contextlib.suppress(FileNotFoundError):
                    if directory:
                        shutil.rmtree(temp)
                    else:
                        os.unlink(temp)
        finally:
            os.close(held)  # the lock goes last: until the name is gone, no sweep may take it for a dead run's


# copy_file_range cannot cross file systems (EXDEV), and some file systems or seccomp profiles refuse it.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def _copy_range(src: int, out: int, start: int, end: int, at: int) -> None:
    """Bytes [start, end) of `src` to `out` at offset `at`: in the kernel where it can, else read and written."""
    offset = start
    while offset < end:
        try:
            copied = os.copy_file_range(src, out, end - offset, offset, at + offset - start)
        except OSError as error:
            if error.errno not in _NO_KERNEL_COPY:
                raise
            chunk = os.pread(src, min(CHUNK, end - offset), offset)
            copied = os.pwrite(out, chunk, at + offset - start) if chunk else 0
        if copied == 0:
            raise OSError(errno.EIO, "the layer ended early")
        offset += copied


def _copy_file(source: str, out: int) -> None:
    """Append `source` to `out`, keeping its holes (an uncompressed layer's zeros) as holes."""
    with open(source, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        start = os.lseek(out, 0, os.SEEK_CUR)
        offset = 0
        while offset < size:
            data, end = data_at(src.fileno(), offset, size)
            _copy_range(src.fileno(), out, data, end, start + data)
            offset = max(end, data)
        if os.fstat(out).st_size < start + size:  # it ended in a hole
            os.ftruncate(out, start + size)
        os.lseek(out, start + size, os.SEEK_SET)


def _place(source: str, target: str) -> None:
    """`source` at `target` too: a hard link where it can be (the layer is not copied at all), else a copy."""
    try:
        os.link(source, target)
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _copy_file(source, fd)
    finally:
        os.close(fd)


def write_layout(builts: list[Built], name: str, path: str) -> None:
    """An OCI layout directory at `path` (new), the image (or index of images) named `name` in its index."""
    with _new_path(path, "oci: directory", directory=True) as (temp, _):
        os.makedirs(os.path.join(temp, "blobs", "sha256"))
        for member, content in _layout_files(builts, name):
            target = os.path.join(temp, member)
            if isinstance(content, bytes):
                with open(target, "wb") as f:
                    f.write(content)
            else:
                _place(content, target)


def _tar_header(name: str, size: int, directory: bool = False, at: int | None = None) -> bytes:
    """The headers of an archive member (root-owned, 0644 or 0755, mtime 0; a PAX size past 8 GiB; data on a
    block when `at`, where the headers go, is given)."""
    if directory:
        return ustar_header(name, b"5", 0o755, 0, 0)
    return member_headers(name, 0o644, size, 0, at=at)


def _write_archive(files: list[tuple[str, bytes | str]], path: str) -> None:
    with _new_path(path, "archive") as (_, held):
        fd = os.dup(held)  # the writer closes its own; the held one keeps the lock until the rename
        try:
            directories: set[str] = set()
            for member, content in files:
                for parent in reversed(_parents(member)):  # each directory once, before its files
                    if parent not in directories:
                        write_all(fd, _tar_header(parent + "/", 0, directory=True))
                        directories.add(parent)
                size = len(content) if isinstance(content, bytes) else os.stat(content).st_size
                # A layer's data on a block, as the disk's are in the layer: a clone can share them.
                at = None if isinstance(content, bytes) else os.lseek(fd, 0, os.SEEK_CUR)
                write_all(fd, _tar_header(member, size, at=at))
                if isinstance(content, bytes):
                    write_all(fd, content)
                else:
                    _copy_file(content, fd)
                write_all(fd, bytes(-size % BLOCK))
            write_all(fd, bytes(2 * BLOCK))
        finally:
            os.close(fd)


def _parents(path: str) -> list[str]:
    found = []
    while (path := os.path.dirname(path)):
        found.append(path)
    return found


def write_oci_archive(builts: list[Built], name: str, path: str) -> None:
    """An OCI layout in one tar at `path` (new)."""
    _write_archive(_layout_files(builts, name), path)


def write_docker_archive(builts: list[Built], name: str, path: str) -> None:
    """A `docker save` archive at `path` (new): what `docker load` and `podman load` read (one platform)."""
    [built] = builts
    _write_archive(_docker_files(built, name), path)
