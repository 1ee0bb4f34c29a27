"""Which engine serves IMAGE: `--engine` (auto: the store that holds the image, podman first) and IMAGE's
transport resolved into an engine, and the image found in its store, pulled as asked, for the platform asked.
What went wrong is told here with what every store looked in said: an image in none of them, a pull that
failed, a platform the image is not for, a path given where an image name goes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from typing import BinaryIO

from cdisk.core.engines.common import has_registry, is_reference, looks_like_id
from cdisk.core.engines.seam import AUTO, FILE_TRANSPORTS, NAMES, Engine, Image
from cdisk.core.errors import ImageError, LayerRefused, PullFailed, ToolError, UsageError
from cdisk.core.progress import Progress
from cdisk.core.request import ImageRequest, Pull


def named(name: str) -> Engine:
    """The engine called `name` (one of NAMES, or "file" for image files)."""
    # Each engine's module is imported only when it is named: docker's (and its SDK) only where podman lacks
    # the image (tests/e2e/test_startup.py and the benchmark's fixed cost watch this).
    if name == "file":
        from cdisk.core.engines.file import FILES

        return FILES
    if name == "docker":
        from cdisk.core.engines.docker import DOCKER

        return DOCKER
    from cdisk.core.engines.podman import PODMAN

    return PODMAN


def of(image: Image) -> Engine:
    """The engine whose store holds `image`."""
    return named(image.engine)


# Transports naming an engine's store, as skopeo names them; `docker://` pulls into the engine chosen.
_STORES = {"containers-storage:": "podman", "docker-daemon:": "docker", "docker://": AUTO}
# Those that name an image already in a store: skopeo never pulls for them, nor does cdisk.
LOCAL_STORES = ("containers-storage:", "docker-daemon:")


def _transport(request: ImageRequest) -> ImageRequest:
    """The request with IMAGE's transport (if any) resolved into the engine that serves it."""
    if request.reference.startswith(FILE_TRANSPORTS):
        return replace(request, engine="file")  # files need no engine, whichever --engine says
    for prefix, engine in _STORES.items():
        if request.reference.startswith(prefix):
            if engine != AUTO and request.engine not in (AUTO, engine):
                raise UsageError(f"{request.reference} names {engine}'s store but --engine says {request.engine}; "
                                 "drop one of them")
            return replace(request, reference=request.reference[len(prefix):],
                           engine=engine if engine != AUTO else request.engine)
    return request


def find(request: ImageRequest, progress: Progress) -> tuple[Engine, Image]:
    """The engine `request.engine` (or IMAGE's transport) names and the image in its store, pulled as asked, for
    `request.platform`: an image in the store for another platform is pulled again for this one, as podman pulls
    it (unless `--pull never`, an ID or a local store's transport says it must be that image, or it is an image
    file, which is what it is). An image that names no architecture is taken for the platform asked, before a
    pull as after one. `containers-storage:` and `docker-daemon:` name a local image: never pulled.

    Raises:
        UsageError: a malformed --platform, a transport that contradicts --engine, `--pull always` with a local
            store's transport, or a path where an image name goes.
        ImageError: the image is in no store looked in and cannot be pulled, or is for another platform and
            cannot be pulled for this one.
    """
    request, local, path = _prepared(request)
    if local:
        engine, image = _find_local(request, local, progress)
    else:
        engine, image = _find(request, progress, path)
    if not request.platform:
        return engine, image
    if _serves(image, str(request.platform)):
        return engine, replace(image, platform=str(request.platform))
    have, wanted, reference = _platform_of(image), str(request.platform), request.reference
    if not engine.stores or looks_like_id(reference):
        raise ImageError(f"{reference} is {have}, --platform asks {wanted}; name the image for that platform, or "
                         "drop --platform")
    if request.pull is Pull.NEVER or local:
        raise ImageError(f"{reference} is {have}, --platform asks {wanted}; pull that platform (`{engine.name} pull "
                         f"--platform {wanted} {reference}`) or drop --platform")
    progress.stage(f"{reference} in {engine.name}'s store is for {have}: pulling it for {wanted}")
    try:
        image = engine.find_image(replace(request, engine=engine.name, pull=Pull.ALWAYS), progress)
    except PullFailed as failed:
        raise ImageError(f"{reference} in {engine.name}'s store is {have}, --platform asks {wanted}, and pulling "
                         f"that platform failed: {failed.reason}; check the name and --platform, or drop --platform "
                         "to use the local image") from None
    if _serves(image, wanted):
        return engine, replace(image, platform=wanted)
    raise ImageError(f"{reference} in the registry is {_platform_of(image)}, not {wanted} as --platform asks; check "
                     "the name and --platform")


def check(request: ImageRequest) -> None:
    """Refuse what no engine could take, before any engine or tool starts (`find` checks it too): a transport
    that contradicts --engine, `--pull always` with a local store's transport, a malformed --platform, an IMAGE
    that can be no image name (empty, a path, or behind a store's transport anything but a name, such as one an
    engine would read as its switch). Nothing runs; a path IMAGE is looked at.

    Raises:
        UsageError: as `find`.
    """
    _prepared(request)


def _prepared(request: ImageRequest) -> tuple[ImageRequest, str, str]:
    """The request with its transport resolved and its platform normal; the local store's transport it names
    ("" for none); and the usage error for a path IMAGE to raise where no store holds an image of its name ("")."""
    local = next((prefix for prefix in LOCAL_STORES if request.reference.startswith(prefix)), "")
    store = next((prefix for prefix in _STORES if request.reference.startswith(prefix)), "")
    bare = request.engine != "file" and not request.reference.startswith((*FILE_TRANSPORTS, *_STORES))
    if bare and not request.reference:
        raise UsageError("IMAGE is empty; name an image (name[:tag], name@digest or an ID), or an image file with "
                         "its transport (oci:DIR, oci-archive:FILE, docker-archive:FILE)")
    request = _transport(request)
    if store:
        _check_name(store, request.reference)
    if local and request.pull is Pull.ALWAYS:
        raise UsageError(f"{local}{request.reference} names an image in {request.engine}'s store, which cdisk never "
                         f"pulls; drop --pull always, or write docker://{request.reference} to pull it")
    if request.platform:
        from cdisk.core.oci.platform import normal_platform  # only a run that names a platform

        request = replace(request, platform=normal_platform(request.platform))
    no_name = bare and not is_reference(request.reference)
    path = _path_given(request.reference, no_name) if bare else ""
    if no_name:  # no store can hold it: told before any engine is asked
        raise UsageError(path)
    return request, local, path


def _check_name(transport: str, name: str) -> None:
    """Refuse what follows a store's transport unless it can name an image: the engines would read a name that
    begins with `-` as an option, and nothing else they could take is no name either."""
    if not name:
        raise UsageError(f"{transport} names no image; write {transport}NAME[:TAG]")
    if not is_reference(name):
        raise UsageError(f"{name[:200]} (after {transport}) is no image name (name[:tag], name@digest or an ID); "
                         "check it")


def _serves(image: Image, wanted: str) -> bool:
    """Whether `image` serves the platform `wanted`: its architecture, and its OS and variant where it names them
    (an image that names no architecture serves any)."""
    from cdisk.core.oci.platform import architecture, same_variant

    os_name, arch, *variant = wanted.split("/")
    if not image.architecture:
        return True
    if architecture(image.architecture) != arch or (image.os and image.os != os_name):
        return False
    return not (variant and image.variant) or same_variant(arch, image.variant, variant[0])


def _platform_of(image: Image) -> str:
    from cdisk.core.oci.platform import architecture

    return "/".join(part for part in (image.os, architecture(image.architecture), image.variant) if part)


def _find_local(request: ImageRequest, transport: str, progress: Progress) -> tuple[Engine, Image]:
    """The image a local store's transport names, looked up in that store only: never pulled, whatever --pull says
    (`--pull always` was refused before)."""
    engine = named(request.engine)
    if not engine.available():  # not installed, or its daemon not answering: the engine's own words say so
        return engine, engine.find_image(replace(request, pull=Pull.NEVER), progress)
    image = engine.lookup(request.reference, progress)
    if image is None:
        reference = request.reference
        raise ImageError(f"{reference} is not in {engine.name}'s store, and {transport} names a local image, which "
                         f"cdisk does not pull; check the name (`{engine.name} images`), or pull it (`{engine.name} "
                         f"pull {reference}`)")
    return engine, image


def _find(request: ImageRequest, progress: Progress, path: str = "") -> tuple[Engine, Image]:
    """The engine `request.engine` names and the image in its store, pulled as asked.

    `auto`: the engine whose store already holds the image (podman first when both do), else the first one
    installed and answering (podman first), which then pulls it. An engine that fails to answer a lookup, or is
    pointed at a store cdisk refuses to read (a remote CONTAINER_HOST), is passed over; why is the answer only
    when no engine could take the image. `path`: the usage error for an IMAGE that names an image file here,
    raised where no store holds an image of that name, before any pull.

    Raises:
        ToolError: no engine is installed and answering (or the one named is not).
        ImageError: the image is in no store looked in and cannot be pulled (its message names the stores); or
            the only engines are pointed at remote stores.
        UsageError: `path`, where no store holds the image.
    """
    if request.engine != AUTO:
        engine = named(request.engine)
        if path and engine.lookup(request.reference, progress) is None:
            raise UsageError(path)
        try:
            return engine, engine.find_image(request, progress)
        except PullFailed as failure:
            present = request.pull in (Pull.ALWAYS, Pull.NEWER) and engine.lookup(request.reference, progress)
            raise _pull_failed(failure, request, [engine.name], present=bool(present)) from None
    failed: list[ToolError] = []
    refused: list[ImageError] = []
    answering = []
    # One engine at a time: where podman holds the image, docker's module is never even imported.
    for engine in (named(name) for name in NAMES):
        try:
            if not engine.available():
                continue
        except ImageError as error:  # pointed at a remote store: another engine may still serve
            refused.append(error)
            continue
        try:
            local = engine.lookup(request.reference, progress)
        except ToolError as error:
            progress.stage(f"{engine.name} could not look {request.reference} up: {error.message}")
            failed.append(error)
            continue
        answering.append(engine)
        if local is None:
            continue
        if request.pull in (Pull.MISSING, Pull.NEVER) or looks_like_id(request.reference):
            return engine, local
        try:
            return engine, engine.find_image(replace(request, engine=engine.name), progress)
        except PullFailed as failure:
            raise _pull_failed(failure, request, [engine.name], present=True) from None
    if not answering:
        if refused:
            raise refused[0]
        if failed:
            raise failed[0]
        raise ToolError("neither podman nor docker is installed and answering here; install one "
                        "(Debian/Ubuntu: apt-get install podman), or start the docker daemon and check that "
                        "DOCKER_HOST (if set) names its local unix socket and that you may use it")
    if path:
        raise UsageError(path)
    looked_in = [engine.name for engine in answering]
    if request.pull is Pull.NEVER or looks_like_id(request.reference):
        raise ImageError(_absent(request.reference, looked_in))
    engine = answering[0]
    try:
        return engine, engine.find_image(replace(request, engine=engine.name), progress)
    except PullFailed as failure:
        raise _pull_failed(failure, request, looked_in, present=False) from None


def _stores(names: list[str]) -> str:
    """Where an image is not: "not in podman's store", "in neither podman's nor docker's store"."""
    if len(names) == 1:
        return f"not in {names[0]}'s store"
    return "in neither " + " nor ".join(f"{name}'s" for name in names) + " store"


def _listed(names: list[str]) -> str:
    return ", ".join(f"`{name} images`" for name in names)


def _absent(reference: str, looked_in: list[str]) -> str:
    which = looked_in[0] + "'s" if len(looked_in) == 1 else "neither " + " nor ".join(f"{n}'s" for n in looked_in)
    if looks_like_id(reference):
        return (f"no image with ID {reference} in the local store ({which}), and an ID cannot be pulled; check the "
                f"ID ({_listed(looked_in)})")
    return (f"image {reference} is not in the local store ({which}) and --pull never forbids pulling; check the name "
            f"({_listed(looked_in)}), or pull it (`{looked_in[0]} pull {reference}`) or drop --pull never")


def _pull_failed(failed: PullFailed, request: ImageRequest, looked_in: list[str], present: bool) -> ImageError:
    """The one line for a pull that failed: where the image is not (or is), why the pull failed, what to do."""
    reference, tool, reason = request.reference, failed.engine, failed.reason
    lowered = reason.lower()
    if "http response to https client" in lowered:
        todo = "if the registry speaks plain HTTP, pass --tls-verify=false"
    elif any(word in lowered for word in ("unauthorized", "denied", "authentication required")):
        todo = f"check the name, or log in (`{tool} login`) and try again"
    elif present:
        todo = "check the registry, or use the local image (--pull missing)"
    elif not has_registry(reference):  # a short name: `pull` of it resolves it as this pull did, and fails alike
        todo = (f"check the name ({_listed(looked_in)}), or name it in full with its registry "
                "(registry/repository:tag)")
    else:
        todo = f"check the name ({_listed(looked_in)}), or pull it (`{tool} pull {reference}`)"
    if present:
        return ImageError(f"{reference} is in {tool}'s store, but pulling it again failed: {reason}; {todo}")
    return ImageError(f"{reference} is {_stores(looked_in)}, and pulling it failed: {reason}; {todo}")


# What a file's first bytes say it is, when it is no tar: a disk, or a compressed stream.
_DISK_MAGIC = (b"QFI\xfb", b"KDMV", b"conectix", b"vhdxfile")


def _path_given(reference: str, no_name: bool) -> str:
    """The usage error for an IMAGE that is a path here rather than an image name ("" for none): what it holds
    says which transport was meant. `no_name`: IMAGE cannot name an image at all (a leading `/` or `.`), so even a
    path that holds no image, or none at all, is told; a valid name is told only where its path holds an image.
    """
    try:
        mode = os.stat(reference).st_mode
    except (OSError, ValueError):
        if not no_name:
            return ""
        return (f"{reference[:200]} is no image name (name[:tag], name@digest or an ID) and no such path exists; "
                "check it, or name an image file with its transport (oci:DIR, oci-archive:FILE, "
                "docker-archive:FILE)")
    looks = f"{reference} looks like a path, not an image name; did you mean"
    if stat.S_ISDIR(mode):
        if any(os.path.lexists(os.path.join(reference, name)) for name in ("oci-layout", "index.json")):
            return f"{looks} oci:{reference} (an OCI layout)?"
        return "" if not no_name else (f"{reference} is a directory without an OCI layout (no oci-layout, no "
                                       "index.json), not an image name; name an image, or a layout as oci:DIR")
    if no_name and stat.S_ISBLK(mode):
        return (f"{reference} is a block device, not an image; cdisk reads container images: to make one of the "
                "disk on it, copy it to a file (qemu-img convert) and run `cdisk build FILE NAME`")
    if no_name and not stat.S_ISREG(mode):
        kind = "character device" if stat.S_ISCHR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket"
        return (f"{reference} is a {kind}, not an image; cdisk reads container images: name one (name[:tag]), or "
                "an image file with its transport (oci:DIR, oci-archive:FILE, docker-archive:FILE)")
    kinds = _file_kinds(reference) if stat.S_ISREG(mode) else set()
    if "disk" in kinds:
        return (f"{reference} is a disk image file, not a container image; convert it with qemu-img, or make a "
                f"containerDisk of it (`cdisk build {reference} NAME`)")
    meant = [f"{kind}:{reference}" for kind in ("oci-archive", "docker-archive") if kind in kinds]
    if meant:
        what = " and ".join(("an OCI archive" if m.startswith("oci") else "a docker archive") for m in meant)
        return f"{looks} {' or '.join(meant)} ({'it is ' + what})?"
    if not no_name:
        return ""
    return f"{looks} oci-archive:{reference} or docker-archive:{reference}?"


# What a file given as IMAGE is read for, at most: headers (and the PAX and GNU long-name headers before them) up to
# these bounds, never a member's data. A real archive names what it is within them (the old `docker save` of a
# many-layer image puts manifest.json after four entries a layer); a crafted one costs no more than them.
_KIND_HEADERS = 1000
_KIND_BYTES = 4 << 20


class _Heads:
    """An image file read forward for its tar headers only (`tar_headers.Stream`): a member's data skipped by
    seeking, and reads stopped once `_KIND_BYTES` are spent, which reads as the end of the file."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file, self.size, self.position, self.spent = file, size, 0, 0

    def read(self, length: int) -> bytes:
        if self.spent + length > _KIND_BYTES:
            return b""
        self.spent += length
        data = self.file.read(length)
        self.position += len(data)
        return data

    def skip_to(self, position: int) -> bool:
        if position > self.size:
            return False
        if position != self.position:
            self.file.seek(position)
            self.position = position
        return True

    def at_end(self) -> bool:
        return self.position >= self.size


def _file_kinds(path: str) -> set[str]:
    """What the file at `path` is, from its first bytes and tar members: {"oci-archive", "docker-archive"} (both
    for a docker save of docker 25+), {"disk"}, or none known. Its headers are read as an image file's are
    (`tar_headers.read_entries`), up to the first one that reader refuses: what came before it still counts."""
    from cdisk.core.tar_headers import read_entries

    kinds: set[str] = set()
    try:
        with open(path, "rb") as file:
            if file.read(8).startswith(_DISK_MAGIC):
                return {"disk"}
            file.seek(0)
            entries = read_entries(_Heads(file, os.fstat(file.fileno()).st_size), None)
            for _, entry in zip(range(_KIND_HEADERS), entries, strict=False):
                name = entry.name.removeprefix("./")
                if name in ("oci-layout", "index.json"):
                    kinds.add("oci-archive")
                elif name == "manifest.json":
                    kinds.add("docker-archive")
    except (OSError, ValueError, LayerRefused):
        pass
    return kinds


def settled(request: ImageRequest, engine: str) -> ImageRequest:
    """The request with `--engine auto` settled on the engine named `engine` (refresh keeps the store its record
    names); an engine asked by name stays asked."""
    return replace(request, engine=engine) if engine and request.engine == AUTO else request
