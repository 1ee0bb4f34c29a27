"""Container engines: the local image stores cdisk reads disks from. This is the seam; each engine is one module
of this package (podman, docker), and nothing outside it runs an engine's tool or talks to its API.
"""

from __future__ import annotations

import os
import re
import shutil
import socket as sock
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from cdisk.core.errors import ImageError, ToolError, UsageError
from cdisk.core.job import ImageRequest, Pull
from cdisk.core.progress import Progress

if TYPE_CHECKING:  # the save method's modules are imported only by a run that saves
    from cdisk.core.saved_layers import LayerBlob

# In the order `--engine auto` asks them.
NAMES = ("podman", "docker")
# Image files, read by the `file` engine whatever --engine says.
FILE_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")
AUTO = "auto"
_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


@dataclass(frozen=True)
class Image:
    """An image in an engine's local store, as the engine inspects it.

    `layer_dirs` are where its layers lie on this host, top first, when the store keeps them as plain
    directories (overlay); `store` names the store's driver; `engine` the engine whose store it is.
    """

    reference: str
    id: str
    digest: str
    architecture: str
    size: int
    layers: tuple[str, ...]
    store: str = ""
    layer_dirs: tuple[str, ...] = ()
    engine: str = "podman"
    platform: str = ""  # the platform asked for (--platform), "" for this host's
    disktype: str = ""  # the disk type asked for among podman machine's disk artifacts (--disktype), "": qemu

    @property
    def source(self) -> str:
        """What kind of source it came from: an engine's store (podman, docker) or a file's transport (oci,
        oci-archive, docker-archive)."""
        return self.reference.partition(":")[0] if self.engine == "file" else self.engine


class Engine(Protocol):
    """What cdisk needs of a container engine."""

    name: str
    # Whether the engine can mount an image (docker cannot: no `image mount`).
    mounts: bool
    # Whether `save` copies the layers into a temp dir (image files are read where they lie).
    copies: bool

    def available(self) -> bool:
        """Whether the engine is installed and its store can be asked here (cheap: no import, no API call
        beyond a ping)."""

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        """The image in the local store, or None; never pulls."""

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        """The image in the local store, pulled first as `request.pull` says.

        Raises:
            ImageError: absent and not to be pulled, or the pull failed.
            ToolError: the engine failed or stopped answering.
        """

    def mount(self, image: Image) -> AbstractContextManager[str]:
        """The image's root filesystem, mounted while the block runs; its path on this host."""

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        """The image's layers, lowest first, saved uncompressed into the private dir `workdir` (None where the
        engine does not `copies`)."""

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        """`argv` running in the engine's rootless user namespace (as `podman unshare`): the child process,
        stopped and reaped when the block ends.
        """


def looks_like_id(reference: str) -> bool:
    """Whether `reference` is an image ID (full or short) rather than a name."""
    return bool(_IMAGE_ID.match(reference))


def installed(tool: str) -> bool:
    return shutil.which(tool) is not None


def answers(socket: str) -> bool:
    """Whether an engine's API answers `/_ping` on the unix socket `socket` (podman's and docker's alike).

    Asked over a bare socket: no client library is imported to learn that nobody is there.
    """
    try:
        if not Path(socket).is_socket():
            return False
        with sock.socket(sock.AF_UNIX, sock.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(socket)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            reply = conn.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


def socket_trusted(socket: str) -> bool:
    """Whether the engine behind `socket` is root's or this user's own: only such an engine's word on where its
    layers lie is taken (another user's daemon could name any directory of the host, /etc included).
    """
    try:
        return os.stat(socket).st_uid in (0, os.geteuid())
    except OSError:
        return False


def layer_dirs_of(attrs: dict[str, Any], trusted: bool) -> tuple[str, ...]:
    """The layer directories an engine's inspection names (overlay: GraphDriver's UpperDir, then LowerDir; top
    first), or none from an engine that is not `trusted`.
    """
    data = (attrs.get("GraphDriver") or {}).get("Data") or {}
    if not trusted:
        return ()
    dirs = [data["UpperDir"]] if data.get("UpperDir") else []
    return (*dirs, *(d for d in str(data.get("LowerDir") or "").split(":") if d))


def named(name: str) -> Engine:
    """The engine called `name` (one of NAMES, or "file" for image files)."""
    if name == "file":
        from cdisk.core.engines.files import FILES

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
    `request.platform`: an image in the store for another platform is pulled again for this one (unless
    `--pull never` or an ID says it must be that image).

    Raises:
        UsageError: a malformed --platform, or a transport that contradicts --engine.
        ImageError: the image is for another platform and cannot be pulled for this one.
    """
    request = _transport(request)
    if not request.platform:
        return _find(request, progress)
    from cdisk.core.oci_layout import architecture, normal_platform

    request = replace(request, platform=normal_platform(request.platform))
    engine, image = _find(request, progress)
    wanted = str(request.platform).split("/")
    if not image.architecture or architecture(image.architecture) == wanted[1]:
        return engine, replace(image, platform=str(request.platform))
    fixed = request.pull is Pull.NEVER or looks_like_id(request.reference) or engine.name == "file"
    if not fixed:
        progress.stage(f"{request.reference} in {engine.name}'s store is for {image.architecture}: pulling it for "
                       f"{request.platform}")
        image = engine.find_image(replace(request, engine=engine.name, pull=Pull.ALWAYS), progress)
        if architecture(image.architecture) == wanted[1]:
            return engine, replace(image, platform=str(request.platform))
    if request.pull is Pull.NEVER and engine.name != "file":
        advice = "drop --pull never to pull it for that platform"
    elif fixed:
        advice = "name the image for that platform"
    else:
        advice = "the registry has it for no such platform; check the name and --platform"
    raise ImageError(f"{request.reference} is for {image.architecture}, not {request.platform}; {advice}")


def _find(request: ImageRequest, progress: Progress) -> tuple[Engine, Image]:
    """The engine `request.engine` names and the image in its store, pulled as asked.

    `auto`: the engine whose store already holds the image (podman first when both do), else the first one
    installed and answering (podman first), which then pulls it. An engine that fails to answer a lookup is
    passed over; its error is the answer only when no engine could take the image.

    Raises:
        ToolError: no engine is installed and answering (or the one named is not).
        ImageError: as `Engine.find_image`.
    """
    if request.engine != AUTO:
        engine = named(request.engine)
        return engine, engine.find_image(request, progress)
    failed: list[ToolError] = []
    answering = []
    # One engine at a time: where podman holds the image, docker's module is never even imported.
    for engine in (named(name) for name in NAMES):
        if not engine.available():
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
        return engine, engine.find_image(replace(request, engine=engine.name), progress)
    if not answering:
        if failed:
            raise failed[0]
        raise ToolError("neither podman nor docker is installed and answering here; install one "
                        "(Debian/Ubuntu: apt-get install podman), or start the docker daemon and check that "
                        "DOCKER_HOST (if set) names its local unix socket and that you may use it")
    engine = answering[0]
    return engine, engine.find_image(replace(request, engine=engine.name), progress)
