"""`cdisk refresh`: make a target current — cheap when nothing changed, atomic when something did.

Beside TARGET live its record (`TARGET.cdisk.json`: what was last written) and its lock
(`.TARGET.cdisk.lock`, held with flock while a refresh runs). A refresh converts only when the image,
the request or the target itself differs from the record.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from cdisk.core import target
from cdisk.core.commands.convert import write_disk
from cdisk.core.engines import choice
from cdisk.core.engines.common import has_registry, looks_like_id
from cdisk.core.engines.seam import FILE_TRANSPORTS, Image
from cdisk.core.errors import BusyError, TargetError
from cdisk.core.progress import Progress
from cdisk.core.qemu.output_formats import suffix_mismatch
from cdisk.core.request import ImageRequest, Pull, ReadRequest, WriteRequest, check_write

RECORD_SUFFIX = ".cdisk.json"
LOCK_SUFFIX = ".cdisk.lock"
# A record is a few hundred bytes; anything much larger is not one.
RECORD_LIMIT = 64 << 10


@dataclass(frozen=True)
class Record:
    """What the last refresh wrote: enough to tell, without reading the disk, whether it is current."""

    image: str
    image_id: str
    digest: str
    disk: str
    source_format: str
    target_format: str
    compressed: bool
    size: int
    mtime_ns: int
    # The engine whose store it came from; later refreshes of `--engine auto` keep to it. Records written
    # before docker was an engine have none: auto then chooses as for a first refresh.
    engine: str = ""
    # The platform asked for ("": this host's); later refreshes of the same IMAGE without --platform keep it.
    platform: str = ""
    # The disk type asked for among podman machine's disk artifacts ("": qemu); kept as the platform is.
    disktype: str = ""
    # What kind of source it came from (podman, docker, oci, oci-archive, docker-archive).
    source: str = ""
    # The digest the registry gave for IMAGE's tag (one HEAD request) before the image was taken: while the tag
    # stays there, the next refresh pulls nothing. Records of earlier versions have none: they pull once.
    tag_digest: str = ""


# A Record field's JSON type by its annotation (a string: the module postpones annotations).
_FIELD_TYPES: dict[object, type] = {"str": str, "bool": bool, "int": int}
_JSON_KINDS = {str: "a string", bool: "true or false", int: "a whole number"}


@dataclass(frozen=True)
class RefreshResult:
    """The outcome; the fields of `--json`. `action` is `updated` or `unchanged`; `checked` false where the
    registry could not be asked whether the tag moved (the local image served: exit `EXIT_NOT_CHECKED`);
    `tag_digest` what the registry said the tag is; `written` the bytes the new TARGET holds (0 unchanged)."""

    action: str
    image: str
    engine: str
    source: str
    image_id: str
    digest: str
    target: str
    seconds: float
    disk: str
    method: str | None
    kept: list[str]
    copy: str | None = None
    checked: bool = True
    tag_digest: str = ""
    written: int = 0


def record_path(target_path: str) -> str:
    return target_path + RECORD_SUFFIX


def lock_path(target_path: str) -> str:
    directory, name = os.path.split(target_path)
    return os.path.join(directory, f".{name}{LOCK_SUFFIX}")


@contextmanager
def target_lock(target_path: str, wait: bool) -> Iterator[None]:
    """Hold the target's lock; without `wait`, fail at once if another refresh holds it.

    flock is released by the kernel when the process dies, so a killed refresh never leaves it stuck.
    """
    where = lock_path(target_path)
    try:
        # Never followed: a link planted there would have root create a file wherever it points.
        fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                     0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TargetError(f"{where} is a symlink, which refresh never follows for its lock; remove it") from None
        raise target.target_problem(where, error) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TargetError(f"{where} is not a regular file, which refresh's lock must be; remove it")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BusyError(f"another refresh of {target_path} is running; try again later or drop --no-wait") \
                from None
        yield
    finally:
        os.close(fd)


def load_record(target_path: str) -> Record | None:
    """The record beside the target, or None when there is none or it cannot be read (`read_record` says why)."""
    return read_record(target_path)[0]


def read_record(target_path: str) -> tuple[Record | None, str]:
    """The record beside the target and "", or None and why it is not one ("" when there is none at all).

    A record is small, a regular file (never followed through a link, never a FIFO or device), and of the right
    shape: JSON object whose known fields have their types; fields a later version adds are ignored, and those
    an earlier version lacked take their defaults.
    """
    where = record_path(target_path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as error:
        return None, "it is a symlink" if error.errno == errno.ELOOP else error.strerror or str(error)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "it is not a regular file"
        if st.st_size > RECORD_LIMIT:
            return None, f"it is larger than {RECORD_LIMIT} bytes"
        data = os.read(fd, RECORD_LIMIT + 1)
    except OSError as error:
        return None, error.strerror or str(error)
    finally:
        os.close(fd)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None, "it is not JSON"
    return _record_of(document)


def _record_of(document: object) -> tuple[Record | None, str]:
    if not isinstance(document, dict):
        return None, "it is not a JSON object"
    values: dict[str, Any] = {}
    for known in fields(Record):
        if known.name not in document:
            if known.default is MISSING:
                return None, f"it lacks {known.name!r}"
            continue
        value, kind = document[known.name], _FIELD_TYPES[known.type]
        if type(value) is not kind:  # bool is no int here, nor int a bool
            return None, f"its {known.name!r} is not {_JSON_KINDS[kind]}"
        values[known.name] = value
    return Record(**values), ""


def _write_record(target_path: str, record: Record) -> None:
    # The same temp-beside-and-rename as the disk itself, synced: a record never describes a
    # disk that is not there.
    target.replace_text(record_path(target_path), json.dumps(asdict(record), indent=1) + "\n", durable=True)


def is_current(record: Record | None, image: Image, read: ReadRequest, write: WriteRequest) -> bool:
    """Whether the target still holds what the record says, from the same image, as asked now."""
    if record is None or record.image_id != image.id:
        return False
    if (record.target_format, record.compressed) != (write.out_format, write.compressed):
        return False
    if read.disk_path and "/" + read.disk_path.strip("/") != record.disk:
        return False
    try:
        st = os.stat(write.target)
    except OSError:  # gone or unreadable: converting again will say what is wrong, if anything
        return False
    return (st.st_size, st.st_mtime_ns) == (record.size, record.mtime_ns)


def _refuse_device(target_path: str) -> None:
    # A device's node lives in /dev (a tmpfs: the record and lock would vanish at reboot), and its
    # size and mtime say nothing about its content, so "unchanged" could not be told. Refused before
    # any lookup or lock file.
    if target.names_block_device(target_path):
        target_path = os.path.abspath(target_path)
        raise TargetError(f"{target_path} is a block device, which refresh does not keep current (its record "
                          f"could not live beside it); write it with `cdisk convert --force IMAGE {target_path}` "
                          f"and check it with `cdisk verify IMAGE {target_path}`")


def _check_name_room(target_path: str) -> None:
    directory, name = os.path.split(target_path)
    longest = target.name_max(directory) - max(len(LOCK_SUFFIX) + 1, len(RECORD_SUFFIX), len(".99"))
    if len(os.fsencode(name)) > longest:
        raise TargetError(f"{target_path}: the name is too long for the record and lock refresh keeps beside "
                          f"it (TARGET{RECORD_SUFFIX}, .TARGET{LOCK_SUFFIX}); use a name of at most {longest} "
                          "bytes")


@dataclass(frozen=True)
class _Asked:
    """What the registry said of IMAGE's tag before the image was taken: `digest` ("" not asked, or no answer),
    `checked` false where it was asked and did not answer, and the request as it then goes on."""

    image: ImageRequest
    digest: str = ""
    checked: bool = True
    engine: str = ""


# The variables that send an engine's registry requests through an HTTP proxy (Go's net/http reads both cases).
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def _known(image: Image) -> set[str]:
    """Every manifest digest the store knows `image` by (its own, its repositories', an index's it came from)."""
    return {image.digest, *image.digests} - {""}


def _tag_of(image: ImageRequest) -> str | None:
    """The registry reference to ask about, or None: an image file, a local store's transport, an ID, a digest
    (it names one image: nothing can move), a short name (the engine's own search rules resolve it) or a name
    under `localhost/` without a port (podman's name for an image built here: no registry holds it)."""
    if image.engine == "file" or image.reference.startswith((*FILE_TRANSPORTS, *choice.LOCAL_STORES)):
        return None
    reference = image.reference.removeprefix("docker://")
    if looks_like_id(reference) or "@" in reference or not has_registry(reference):
        return None
    return None if reference.partition("/")[0] == "localhost" else reference


def _ask_registry(image: ImageRequest, record: Record | None, progress: Progress) -> _Asked:
    """With `--pull newer` and a registry to ask: one HEAD of the tag (`engines.registry`). Where it names the
    digest the record keeps, nothing is pulled (the local image serves, pulled only if gone); where it moved, the
    image is pulled; where no registry answers, the local image serves and the run says it was not checked."""
    tag = _tag_of(image) if image.pull is Pull.NEWER else None
    if tag is None:
        return _Asked(image)
    from cdisk.core.engines import registry  # only refresh pays for the client

    engine = image.engine if image.engine in ("podman", "docker") else "podman"
    if any(os.environ.get(name) for name in _PROXIES):
        # cdisk's client goes to no HTTP proxy: the engine, which does, asks as it always has.
        progress.stage(f"an HTTP proxy is set: {engine} asks the registry whether {tag} moved")
        return _Asked(image)
    progress.stage(f"asking the registry whether {tag} moved (one HEAD request)")
    said = registry.head_digest(tag, engine, image.tls_verify)
    if not said.digest and said.reached:
        # It answered, without a digest (a login it wants, no such tag, blocked, …): the engine's own pull
        # judges, and says what is wrong where it is wrong.
        progress.stage(f"the registry gave no digest for {tag} ({said.why}): {engine} asks as it pulls")
        return _Asked(image)
    if not said.digest:
        progress.warn(f"the registry did not answer for {tag} ({said.why}): {image.reference} is not checked; the "
                      "local image serves")
        return _Asked(replace(image, pull=Pull.MISSING), checked=False, engine=engine)
    if record is not None and record.tag_digest == said.digest:
        return _Asked(replace(image, pull=Pull.MISSING), said.digest, engine=engine)
    # Moved (or never recorded): the engine pulls, and the record keeps what the registry said before the pull, so
    # a tag that moves again meanwhile is pulled again next time, never missed.
    return _Asked(replace(image, pull=Pull.ALWAYS if record is not None and record.tag_digest else Pull.NEWER),
                  said.digest, engine=engine)


def refresh(image: ImageRequest, read: ReadRequest, write: WriteRequest, wait: bool,
            progress: Progress) -> RefreshResult:
    """Make `write.target` hold the current disk of `image`.

    Raises:
        BusyError: the target is locked and `wait` is false.
        CdiskError: anything else; the previous target and its record are then untouched.
    """
    started = time.monotonic()
    check_write(image.reference, write)  # before the target, the lock or any lookup: as convert does
    mismatch = suffix_mismatch(write.target, write.out_format)
    if mismatch:
        progress.warn(mismatch)
    _refuse_device(write.target)
    planned = target.plan_target(write.target, True, write.out_format)  # replacing is what refresh is for
    path = planned.path
    _check_name_room(path)
    write = replace(write, target=path)
    with target_lock(path, wait):
        record, unreadable = read_record(path)
        if os.path.lexists(path) and record is None and not write.force:
            named = os.path.basename(record_path(path))
            if unreadable:
                raise TargetError(f"{path} exists but its record {named} is unreadable ({unreadable}); pass --force "
                                  "to let refresh replace both")
            raise TargetError(f"{path} exists but no refresh wrote it (no {named}); pass --force to let refresh "
                              "replace it")
        # The record's engine serves the image it recorded; another IMAGE at the same TARGET is chosen afresh.
        same = record if record is not None and record.image == image.reference else None
        if same is not None:
            image = choice.settled(image, same.engine)
            if same.platform and not image.platform:
                image = replace(image, platform=same.platform)
            if same.disktype and not image.disktype:
                image = replace(image, disktype=same.disktype)
        choice.check(image)  # a request no engine could take is refused before the registry is asked
        asked = _ask_registry(image, same, progress)
        found = choice.find(asked.image, progress)[1]
        if asked.digest and asked.image.pull is Pull.MISSING and asked.digest not in _known(found):
            # The tag is where the record says, but the local image of that name is not the one it names (retagged
            # or pulled by another job meanwhile): the registry's is taken.
            progress.stage(f"the local {image.reference} is not the registry's {asked.digest}: pulling it")
            found = choice.find(replace(asked.image, pull=Pull.ALWAYS), progress)[1]
        # The record keeps the registry's digest only for the image that has it, from the store that was asked for
        # it: never a digest newer than the image taken (a tag that moved between the HEAD and the pull is asked
        # about again next time, and pulled).
        tag_digest = asked.digest if asked.engine in ("", found.engine) and asked.digest in _known(found) else ""
        if not asked.digest and record is not None and record.image_id == found.id:
            tag_digest = record.tag_digest  # not asked (or no answer): what was known of this image stands
        if is_current(record, found, read, write):
            assert record is not None
            if tag_digest != record.tag_digest:
                _write_record(path, replace(record, tag_digest=tag_digest))
            return RefreshResult("unchanged", image.reference, found.engine, found.source, found.id, found.digest, path,
                                 round(time.monotonic() - started, 3), record.disk, None, [], None, asked.checked,
                                 tag_digest)
        written = write_disk(found, read, write, planned, progress)
        with target.os_errors(path):
            st = os.stat(path)
        _write_record(path, Record(image.reference, found.id, found.digest, written.disk, written.source_format,
                                   write.out_format, write.compressed, st.st_size, st.st_mtime_ns, found.engine,
                                   found.platform, found.disktype, found.source, tag_digest))
    kept = [f"{path}.{n}" for n in range(1, write.keep + 1) if os.path.exists(f"{path}.{n}")]
    return RefreshResult("updated", image.reference, found.engine, found.source, found.id, found.digest, path,
                         round(time.monotonic() - started, 3), written.disk, written.reading.method, kept,
                         written.copy, asked.checked, tag_digest, st.st_blocks * 512)
