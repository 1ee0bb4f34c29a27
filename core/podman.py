"""The only module that touches podman: the REST API through podman-py, the CLI through plumbum.

The API serves lookups, inspection and pulls. It is the user's socket when one answers, otherwise a
private `podman system service` that lives exactly as long as the `connect()` block.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdisk.core import processes
from cdisk.core.errors import ImageError, ToolError
from cdisk.core.progress import Progress

PULL_POLICIES = ("missing", "always", "never")
SERVICE_START_SECONDS = 20.0
_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Image:
    """An image in the local store, as podman inspects it."""

    reference: str
    id: str
    digest: str
    architecture: str
    size: int
    layers: tuple[str, ...]


def default_socket() -> str:
    """The podman socket a user's tools would talk to: CONTAINER_HOST, else the rootful/rootless default."""
    host = os.environ.get("CONTAINER_HOST", "")
    if host:
        for scheme in ("unix://", "http+unix://"):
            if host.startswith(scheme):
                return host[len(scheme):]
        raise ImageError(f"CONTAINER_HOST={host} is not a local unix socket; cdisk reads the local image "
                         "store, so unset CONTAINER_HOST or point it at a unix:// socket")
    # Inside `podman unshare` we are root in a user namespace: the socket is still the rootless user's.
    rootless_uid = os.environ.get("_CONTAINERS_ROOTLESS_UID")
    if os.geteuid() == 0 and not rootless_uid:
        return "/run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{rootless_uid or os.geteuid()}"
    return f"{runtime}/podman/podman.sock"


def _client(socket: str) -> Any:
    from podman import PodmanClient

    return PodmanClient(base_url="http+unix://" + socket, timeout=600)


def _answers(socket: str) -> bool:
    if not Path(socket).is_socket():
        return False
    try:
        client = _client(socket)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to talk means "not live": we then start our own
        return False


def _die_with_parent() -> None:
    # If cdisk is killed with SIGKILL no `finally` runs; the kernel then stops the service for us.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def podman_cli() -> Any:
    """The podman command (plumbum), or a clear error when podman is not installed."""
    return processes.command("podman", "podman")


@contextmanager
def local_store() -> Iterator[None]:
    """Run podman CLI calls of this block against the local store.

    With CONTAINER_HOST set the podman CLI turns into a remote client; cdisk's CLI calls must work on
    the local store (and a service must serve it), so the variable is the API client's alone.
    """
    from plumbum import local

    with local.env():
        for name in ("CONTAINER_HOST", "CONTAINER_CONNECTION"):
            if name in local.env:
                del local.env[name]
        yield


@contextmanager
def private_service() -> Iterator[str]:
    """Start `podman system service` on a socket in a private temp dir; stop it and remove the dir after."""
    workdir = tempfile.mkdtemp(prefix="cdisk-podman-")
    socket = os.path.join(workdir, "podman.sock")
    log = open(os.path.join(workdir, "service.log"), "wb")  # noqa: SIM115 - closed in finally
    proc: subprocess.Popen[bytes] | None = None
    try:
        with local_store():
            proc = podman_cli().popen(["system", "service", "--time=0", f"unix://{socket}"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while not _answers(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = Path(workdir, "service.log").read_text(errors="replace").strip()
                raise ToolError(f"podman system service did not start: {detail or 'no output'}; "
                                "check `podman info` works for this user",
                                proc.args if isinstance(proc.args, list) else [], proc.poll(), detail)
            time.sleep(0.02)
        yield socket
    finally:
        if proc is not None:
            processes.stop(proc, grace=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def connect(progress: Progress) -> Iterator[Any]:
    """A podman-py client: to the user's live socket, else to a private service for this block."""
    with _private_unless_live(default_socket(), progress) as live_socket:
        client = _client(live_socket)
        try:
            yield client
        finally:
            client.close()


@contextmanager
def _private_unless_live(socket: str, progress: Progress) -> Iterator[str]:
    if _answers(socket):
        progress.stage(f"podman API at {socket}")
        yield socket
    else:
        progress.stage(f"no podman API at {socket}: starting a private podman service")
        with private_service() as private:
            yield private


def looks_like_id(reference: str) -> bool:
    """Whether `reference` is an image ID (full or short) rather than a name."""
    return bool(_IMAGE_ID.match(reference))


def _inspect(client: Any, reference: str) -> Image | None:
    from podman.errors import ImageNotFound

    try:
        found = client.images.get(reference)
    except ImageNotFound:
        return None
    attrs = found.attrs
    return Image(reference=reference, id=found.id.removeprefix("sha256:"), digest=attrs.get("Digest", ""),
                 architecture=attrs.get("Architecture", ""), size=int(attrs.get("Size") or 0),
                 layers=tuple(attrs.get("RootFS", {}).get("Layers", ())))


def _pull(client: Any, reference: str, tls_verify: bool, progress: Progress) -> None:
    from podman.errors import APIError

    progress.stage(f"pulling {reference}")
    # The compat stream reports bytes per layer; podman-py's pull() would re-parse the reference
    # and mangle digests and ports, so the endpoint is called with the reference as given.
    params = {"reference": reference, "policy": "always", "tlsVerify": tls_verify, "compatMode": True}
    try:
        response = client.api.post("/images/pull", params=params, stream=True)
        response.raise_for_status()
        layers: dict[str, tuple[int, int]] = {}
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event.get("error"):
                raise ImageError(f"cannot pull {reference}: {event['error']}; check the name, the "
                                 "registry and your login (`podman login`)")
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                progress.update(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
    except APIError as error:
        raise ImageError(f"cannot pull {reference}: {error.explanation or error}; check the name, "
                         "the registry and your login (`podman login`)") from None


def resolve_image(client: Any, reference: str, pull: str, progress: Progress,
                  tls_verify: bool = True) -> Image:
    """Find `reference` in the local store, pulling it as podman's `--pull` policy says.

    Raises:
        ImageError: absent with `never`, the pull failed, or it is still absent after pulling.
    """
    if pull not in PULL_POLICIES:
        raise ImageError(f"--pull {pull}: use one of {', '.join(PULL_POLICIES)}")
    local = None if pull == "always" and not looks_like_id(reference) else _inspect(client, reference)
    if local is not None:
        return local
    if pull == "never":
        raise ImageError(f"image {reference} is not in the local store and --pull never forbids pulling; "
                         f"pull it (`podman pull {reference}`) or drop --pull never")
    if looks_like_id(reference):
        raise ImageError(f"no image with ID {reference} in the local store, and an ID cannot be pulled; "
                         "check `podman images`")
    _pull(client, reference, tls_verify, progress)
    pulled = _inspect(client, reference)
    if pulled is None:
        raise ImageError(f"pulled {reference} but podman cannot find it afterwards; check `podman images`")
    return pulled


def save_oci_dir(image_id: str, destination: str) -> None:
    """`podman save --uncompressed --format oci-dir` of one image into `destination` (must not exist)."""
    argv = ["save", "--quiet", "--uncompressed", "--format", "oci-dir", "-o", destination, image_id]
    with local_store():
        code, _, err = processes.run(podman_cli(), argv)
    if code != 0:
        last = processes.last_line(err, code)
        hint = "free some space or pass --tmpdir on a larger filesystem" if "no space" in last.lower() \
            else "check `podman image inspect " + image_id + "`"
        raise ToolError(f"podman save failed: {last}; {hint}", ["podman", *argv], code, err)


@contextmanager
def mount_image(image_id: str) -> Iterator[str]:
    """`podman image mount` the image; unmount exactly this one mount when the block ends.

    Mounts are reference-counted by containers/storage, so one `unmount` (never `--all`, never
    `--force`) takes back exactly what this block added and leaves other users' mounts alone.
    """
    with local_store():
        code, out, err = processes.run(podman_cli(), ["image", "mount", image_id])
    if code != 0:
        raise ToolError(f"podman image mount failed: {processes.last_line(err, code)}; use --method save",
                        ["podman", "image", "mount", image_id], code, err)
    try:
        yield out.strip()
    finally:
        with local_store():
            code, _, err = processes.run(podman_cli(), ["image", "unmount", image_id])
            # Removing an image (`rmi -f`) takes its mounts with it: then there is nothing left to undo.
            gone = code != 0 and processes.run(podman_cli(), ["image", "exists", image_id])[0] == 1
        if code != 0 and not gone:
            raise ToolError(f"podman image unmount failed: {processes.last_line(err, code)}; "
                            f"run `podman image unmount {image_id}`", ["podman", "image", "unmount", image_id],
                            code, err)
