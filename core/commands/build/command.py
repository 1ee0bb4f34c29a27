"""`cdisk build DISK NAME[:TAG]`: the disk judged as convert judges an image's disk (cdisk never builds an image
it would refuse to convert) and refused where it is plainly not a disk (`disk_check`), converted if asked,
written as the one layer of a containerDisk, and loaded into an engine or written as a file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cdisk.core import leftovers
from cdisk.core.commands.build import disk_check, image, layer
from cdisk.core.disk.inspection import inspect_disk
from cdisk.core.engines import choice
from cdisk.core.engines.file import FILES
from cdisk.core.engines.seam import Engine
from cdisk.core.errors import TargetError, UsageError
from cdisk.core.oci.media_types import LAYER_TYPES
from cdisk.core.oci.platform import Platform, host_platform, normal_platform
from cdisk.core.progress import Progress
from cdisk.core.qemu import qemu_img
from cdisk.core.sources.in_place import InPlaceFile
from cdisk.core.target import Target, temp_parent

OUTPUTS = ("oci", "oci-archive", "docker-archive")
COMPRESSIONS = tuple(LAYER_TYPES)
FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class BuildRequest:
    """What to build: DISK as NAME[:TAG], where (`output`: TRANSPORT:PATH, else into `engine`) and how."""

    disk: str
    name: str
    output: str | None = None
    engine: str = "podman"
    out_format: str | None = None
    compress: bool = False
    layer_compression: str | None = None
    platforms: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    instancetype: str | None = None
    preference: str | None = None
    tmpdir: str | None = None
    push: str | None = None
    tls_verify: bool | None = None
    raw: bool = False


@dataclass(frozen=True)
class BuildResult:
    """What was built and where it went."""

    image: str
    image_id: str
    destination: str
    format: str
    virtual_size: int
    layer_compression: str
    layer_digest: str
    layer_size: int
    diff_id: str
    platforms: tuple[str, ...]
    pushed: str | None
    iso9660: bool = False


# The reference grammar of docker and podman (distribution/reference): [DOMAIN/]PATH[:TAG], no digest.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?")
# The largest time the tar's mtime field (11 octal digits) and Go's RFC 3339 years both hold.
_LATEST_EPOCH = 8**11 - 1


def full_name(name: str, what: str = "NAME") -> str:
    """NAME[:TAG] with its tag (latest when none is given).

    Raises:
        UsageError: not a reference engines accept (uppercase, spaces, an empty tag, a digest, …).
    """
    first = name.split("/", 1)[0]
    # The first component is a registry only when it looks like a host (a dot, a port, localhost); otherwise it
    # is part of the repository's path, which is lowercase.
    host = "/" in name and ("." in first or ":" in first or first == "localhost")
    if len(name) > 255 or not _REFERENCE.fullmatch(name) or (not host and first != first.lower()):
        raise UsageError(f"{what} {name!r} is not [REGISTRY/]NAME[:TAG] in lowercase; write e.g. "
                         "localhost/fedora-disk:40")
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _text(value: str, what: str) -> str:
    """A label or hint as it may go into the config: UTF-8 without control characters (which Go's encoders of
    different versions write differently, changing the image ID)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise UsageError(f"{what} {value!r} is not UTF-8; give it as text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UsageError(f"{what} {value!r} holds a control character; remove it")
    return value


def _output(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    transport, _, path = text.partition(":")
    if transport not in OUTPUTS or not path:
        raise UsageError(f"--output {text}: give oci:DIR, oci-archive:FILE or docker-archive:FILE")
    return transport, os.path.abspath(path)


def _specs(request: BuildRequest) -> list[image.ImageSpec]:
    """One config's settings per platform asked (default: this host's)."""
    platforms = list(dict.fromkeys(normal_platform(p) for p in request.platforms or (host_platform(),)))
    env = []
    if request.instancetype:
        env.append(f"{image.INSTANCETYPE_ENV}={_text(request.instancetype, '--instancetype')}")
    if request.preference:
        env.append(f"{image.PREFERENCE_ENV}={_text(request.preference, '--preference')}")
    labels = {_text(key, "--label"): _text(value, "--label") for key, value in request.labels}
    # SOURCE_DATE_EPOCH: the reproducible-builds convention for "when", which the layer and config then carry.
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not re.fullmatch(r"[0-9]{1,12}", epoch) or int(epoch) > _LATEST_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch[:40]} is not a number of seconds up to {_LATEST_EPOCH}; "
                         "unset it or fix it")
    specs = []
    for platform in platforms:
        specs.append(image.ImageSpec(Platform.parse(platform), labels, tuple(env), int(epoch)))
    return specs


@contextmanager
def _opened(path: str) -> Iterator[InPlaceFile]:
    try:
        # O_NONBLOCK: a FIFO named as DISK must not block the open (it is refused below, as any non-file is).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        raise UsageError(f"cannot read DISK {path}: {error.strerror}; give a disk file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"DISK {path} is not a regular file; give a disk file (convert a device first)")
        yield InPlaceFile(path, fd, info.st_size)
    finally:
        os.close(fd)


def build(request: BuildRequest, progress: Progress) -> BuildResult:
    """Build the containerDisk as asked.

    Raises:
        CdiskError: a wrong switch, a disk convert would refuse, an output that exists, a failed engine load.
    """
    name = full_name(request.name)
    if request.push is not None:
        full_name(request.push, "--push")
    output = _output(request.output)
    if request.out_format is not None and request.out_format not in FORMATS:
        raise UsageError(f"--format {request.out_format}: give qcow2 or raw")
    if request.compress and (request.out_format or "qcow2") != "qcow2":
        raise UsageError("--compress needs --format qcow2 (compressed clusters are qcow2's)")
    # An engine stores layers uncompressed (and compresses them itself when pushing); files travel compressed.
    compression = request.layer_compression or ("gzip" if output and output[0] != "docker-archive" else "none")
    specs = _specs(request)
    if len(specs) > 1 and (output[0] == "docker-archive" if output else request.push is None):
        raise UsageError("several --platform make an image index, which an engine's store or a docker archive "
                         "cannot hold: add --push REF, or --output oci:DIR or oci-archive:FILE")
    if output is not None and os.path.lexists(output[1]):
        raise TargetError(f"{output[1]} exists; remove it or choose another --output")
    if output is not None and not os.path.isdir(os.path.dirname(output[1])):
        raise TargetError(f"{os.path.dirname(output[1])} does not exist; create it or choose another --output")
    parent = temp_parent(request.tmpdir, Target(output[1], is_block=False) if output else None)
    # One platform and no --output: the image goes into an engine's store, and a push goes from there.
    into_engine = output is None and len(specs) == 1
    if request.push is not None and not into_engine and ":" in os.path.abspath(parent):
        # skopeo reads the push's layout as oci:PATH:NAME, split at the first colon
        raise UsageError(f"--push needs a work directory whose path has no ':', and {parent} has one; pass "
                         "--tmpdir with another")
    with ExitStack() as stack:
        source = stack.enter_context(_opened(request.disk))
        progress.stage(f"checking {request.disk}")
        judged = inspect_disk(source)
        # What is plainly not a disk is refused before any work: no temp dir, no layer, no engine.
        content = disk_check.check_disk(request.disk, source.read_at(0, disk_check.HEAD_BYTES), source.size,
                                        judged.format, request.raw)
        work = stack.enter_context(_work_dir(parent))
        wanted = request.out_format or judged.format
        if wanted not in FORMATS:
            wanted = "qcow2"  # a vmdk, vhdx, …: KubeVirt reads raw and qcow2
        disk_fd, size, fmt = source.fd, source.size, judged.format
        if wanted != judged.format or request.compress:
            converted = os.path.join(work, f"disk.{wanted}")
            os.close(os.open(converted, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # the sandbox binds a file
            progress.stage(f"converting {judged.format} to {wanted}{' (compressed)' if request.compress else ''}")
            options = qemu_img.ConvertOptions(wanted, request.compress, compressed_source=judged.compressed)
            qemu_img.convert(judged.spec, converted, options, progress, source.pass_fds)
            made = stack.enter_context(_opened(converted))
            disk_fd, size, fmt = made.fd, made.size, wanted
        progress.stage(f"writing the layer ({compression})")
        blob_path = os.path.join(work, "layer")
        out = os.open(blob_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            written = layer.write_layer(disk_fd, size, out, compression, specs[0].created,
                                        lambda done: progress.update(done, size))
        except OSError as error:  # a write (the disk's reads are checked: DiskChanged)
            raise _no_room(error, parent) from None
        finally:
            os.close(out)
        builts = []
        for spec in specs:
            config = image.config(spec, written)
            builts.append(image.Built(config, image.manifest(config, written), written, blob_path, spec.platform))
        loaded = choice.named(request.engine) if into_engine else None
        destination = _deliver(builts, name, output, loaded, work, progress)
        if request.push is not None:
            progress.stage(f"pushing {request.push}")
            _push(builts, name, request.push, loaded, request.tls_verify, work)
    return BuildResult(name, builts[0].image_id, destination, fmt, judged.virtual_size, compression, written.digest,
                       written.size, written.diff_id, tuple(str(b.platform) for b in builts), request.push,
                       content is disk_check.ISO9660)


def _push(builts: list[image.Built], name: str, ref: str, loaded: Engine | None, tls_verify: bool | None,
          work: str) -> None:
    """Push to `ref`: an image loaded into an engine's store by that engine; files and image indexes as an OCI
    layout made for the push, by the file engine."""
    if loaded is not None:
        loaded.push(name, ref, tls_verify)
        return
    # A layout of its own (the layer hard-linked, not copied) in the work dir, whose path skopeo must read whole:
    # it splits oci:PATH:NAME at the first colon.
    layout = os.path.join(work, "push")
    image.write_layout(builts, name, layout)
    FILES.push(f"oci:{layout}:{name}", ref, tls_verify)


def _deliver(builts: list[image.Built], name: str, output: tuple[str, str] | None, engine: Engine | None,
             work: str, progress: Progress) -> str:
    """Write or load the built image (several platforms: into no engine, only to a push); where it went."""
    try:
        if output is not None:
            transport, path = output
            progress.stage(f"writing {transport}:{path}")
            {"oci": image.write_layout, "oci-archive": image.write_oci_archive,
             "docker-archive": image.write_docker_archive}[transport](builts, name, path)
            return f"{transport}:{path}"
        if engine is None:
            return "push"
        progress.stage(f"loading {name} into {engine.name}")
        # A docker archive names the image (RepoTags) for both engines; podman names an OCI directory by its path.
        archive = os.path.join(work, "image.tar")
        image.write_docker_archive(builts, name, archive)
        engine.load(Path(archive))
        return engine.name
    except OSError as error:
        raise _no_room(error, output[1] if output else work) from None


def _no_room(error: OSError, where: str) -> TargetError:
    if error.errno == errno.ENOSPC:
        return TargetError(f"no space left while writing in {where}; free some or pass --tmpdir elsewhere")
    return TargetError(f"cannot write in {where}: {error.strerror or error}")


@contextmanager
def _work_dir(parent: str) -> Iterator[str]:
    """The build's private directory in `parent`, held under a lock (`leftovers`): what a killed build left there
    (a layer of the disk's size) goes with the next build that writes there."""
    leftovers.sweep(parent, (leftovers.BUILD,))
    try:
        fd, work = leftovers.locked_dir(parent, ".cdisk-build-")
    except OSError as error:
        raise TargetError(f"cannot make a temp dir in {parent}: {error.strerror}; pass --tmpdir") from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)
