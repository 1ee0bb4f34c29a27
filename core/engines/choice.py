"""Which engine serves IMAGE: `--engine` (auto: the store that holds the image, podman first) and IMAGE's
transport resolved into an engine, and the image found in its store, pulled as asked, for the platform asked.
"""

from __future__ import annotations

from dataclasses import replace

from cdisk.core.engines.common import looks_like_id
from cdisk.core.engines.seam import AUTO, FILE_TRANSPORTS, NAMES, Engine, Image
from cdisk.core.errors import ImageError, ToolError, UsageError
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
    `--pull never` or an ID says it must be that image, or it is an image file, which is what it is). An image
    that names no architecture is taken for the platform asked, before a pull as after one.

    Raises:
        UsageError: a malformed --platform, or a transport that contradicts --engine.
        ImageError: the image is for another platform and cannot be pulled for this one.
    """
    request = _transport(request)
    if not request.platform:
        return _find(request, progress)
    from cdisk.core.oci.platform import architecture, normal_platform  # only a run that names a platform

    request = replace(request, platform=normal_platform(request.platform))
    engine, image = _find(request, progress)
    wanted = str(request.platform).split("/")
    if not image.architecture or architecture(image.architecture) == wanted[1]:
        return engine, replace(image, platform=str(request.platform))
    fixed = request.pull is Pull.NEVER or looks_like_id(request.reference) or not engine.stores
    if not fixed:
        progress.stage(f"{request.reference} in {engine.name}'s store is for {image.architecture}: pulling it for "
                       f"{request.platform}")
        image = engine.find_image(replace(request, engine=engine.name, pull=Pull.ALWAYS), progress)
        if not image.architecture or architecture(image.architecture) == wanted[1]:
            return engine, replace(image, platform=str(request.platform))
    if request.pull is Pull.NEVER and engine.stores:
        advice = "drop --pull never to pull it for that platform"
    elif fixed:
        advice = "name the image for that platform"
    else:
        advice = "the registry has it for no such platform; check the name and --platform"
    raise ImageError(f"{request.reference} is for {image.architecture}, not {request.platform}; {advice}")


def _find(request: ImageRequest, progress: Progress) -> tuple[Engine, Image]:
    """The engine `request.engine` names and the image in its store, pulled as asked.

    `auto`: the engine whose store already holds the image (podman first when both do), else the first one
    installed and answering (podman first), which then pulls it. An engine that fails to answer a lookup, or is
    pointed at a store cdisk refuses to read (a remote CONTAINER_HOST), is passed over; why is the answer only
    when no engine could take the image.

    Raises:
        ToolError: no engine is installed and answering (or the one named is not).
        ImageError: as `Engine.find_image`; or the only engines are pointed at remote stores.
    """
    if request.engine != AUTO:
        engine = named(request.engine)
        return engine, engine.find_image(request, progress)
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
        return engine, engine.find_image(replace(request, engine=engine.name), progress)
    if not answering:
        if refused:
            raise refused[0]
        if failed:
            raise failed[0]
        raise ToolError("neither podman nor docker is installed and answering here; install one "
                        "(Debian/Ubuntu: apt-get install podman), or start the docker daemon and check that "
                        "DOCKER_HOST (if set) names its local unix socket and that you may use it")
    engine = answering[0]
    return engine, engine.find_image(replace(request, engine=engine.name), progress)


def settled(request: ImageRequest, engine: str) -> ImageRequest:
    """The request with `--engine auto` settled on the engine named `engine` (refresh keeps the store its record
    names); an engine asked by name stays asked."""
    return replace(request, engine=engine) if engine and request.engine == AUTO else request
