"""The docker engine, and the only module that touches docker: the CLI through plumbum for lookups and save,
the docker SDK for pulls and registry digests.

Measured on this project's machines: one `docker image inspect` costs 0.02-0.06 s, `import docker` alone
0.10 s; so lookups (every run) use the CLI and the SDK is imported only to pull, where it gives what the
CLI does not print off a terminal: bytes per layer, for the progress bar.

docker has no `image mount`: its images are read from the overlay2 layer directories (root) or from
`docker save`'s archive, in place (a user of the `docker` group, who cannot read /var/lib/docker).
Every call goes to the daemon `DOCKER_HOST` names (local unix sockets only), else /var/run/docker.sock.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cdisk.core import processes
from cdisk.core.engines.common import (
    answers,
    installed,
    layer_dirs_of,
    looks_like_id,
    pull_reason,
    socket_trusted,
)
from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, ImageRemoved, NoManifest, PullFailed, ToolError, UsageError
from cdisk.core.progress import Progress
from cdisk.core.request import ImageRequest, Pull

if TYPE_CHECKING:  # LayerBlob's module only for a run that saves: start-up stays cheap
    from cdisk.core.oci.blob import LayerBlob

DEFAULT_SOCKET = "/var/run/docker.sock"
PULL_TIMEOUT = 600
_LOGIN = "check the name, the registry and your login (`docker login`)"


def default_socket() -> str:
    """The daemon's socket: DOCKER_HOST (a local unix socket only), else docker's default."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    raise ImageError(f"DOCKER_HOST={host} is not a local unix socket; cdisk reads the local image store, so "
                     "unset DOCKER_HOST or point it at a unix:// socket")


def _cli(socket: str) -> Any:
    # The socket is named on every call, so a docker context pointing elsewhere cannot redirect us.
    return processes.command("docker", "docker.io")["--host", f"unix://{socket}"]


# `docker info` answers in well under a second; its RegistryConfig is a few KiB.
REGISTRY_CONFIG_SECONDS = 10.0
REGISTRY_CONFIG_LIMIT = 1 << 20


def _docker(socket: str, argv: Sequence[str], what: str) -> str:
    code, out, err = processes.run(_cli(socket), argv)
    if code != 0:
        raise ToolError(f"docker {what} failed: {processes.last_line(err, code)}; check `docker info` works "
                        "for this user", ["docker", *argv], code, err)
    return out


def _check_daemon(socket: str) -> None:
    if not answers(socket):
        raise ToolError(f"the docker daemon does not answer at {socket}; start it (`systemctl start docker`), "
                        "join the docker group, or set DOCKER_HOST to its unix:// socket")


def repository_of(reference: str) -> str:
    """`reference` without its tag or digest, in docker's familiar form (no docker.io/library/)."""
    name = reference.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def digest_for(reference: str, repo_digests: list[str]) -> str:
    """The manifest digest of `reference`'s own repository among the image's RepoDigests ("" when none): an
    image pushed to two registries has a digest in each, and only its own one pulls by `repository@digest`.
    """
    wanted = repository_of(reference)
    pairs = [entry.split("@", 1) for entry in repo_digests if "@" in entry]
    own = [digest for repository, digest in pairs if repository_of(repository) == wanted]
    return (own or [digest for _, digest in pairs] or [""])[0]


def _image(reference: str, attrs: dict[str, Any], trusted: bool) -> Image:
    driver = attrs.get("GraphDriver") or {}
    return Image(reference=reference, id=str(attrs["Id"]).removeprefix("sha256:"),
                 digest=digest_for(reference, [str(d) for d in attrs.get("RepoDigests") or []]),
                 architecture=attrs.get("Architecture") or "", size=int(attrs.get("Size") or 0),
                 layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()), store=str(driver.get("Name") or ""),
                 layer_dirs=layer_dirs_of(attrs, trusted), engine="docker", os=str(attrs.get("Os") or ""),
                 variant=str(attrs.get("Variant") or ""),
                 digests=tuple(dict.fromkeys(str(d).rsplit("@", 1)[1] for d in attrs.get("RepoDigests") or []
                                             if "@" in str(d))))


def _inspect(socket: str, reference: str) -> tuple[Image, list[str]] | None:
    """The image and its RepoDigests, or None when the store has no such image."""
    argv = ["image", "inspect", "--format", "{{json .}}", "--", reference]
    code, out, err = processes.run(_cli(socket), argv)
    if code != 0:
        if "no such image" in err.lower():
            return None
        raise ToolError(f"docker image inspect failed: {processes.last_line(err, code)}; check `docker info` "
                        "works for this user", ["docker", *argv], code, err)
    attrs = json.loads(out.splitlines()[0])
    return _image(reference, attrs, socket_trusted(socket)), [str(d) for d in attrs.get("RepoDigests") or []]


def registry_of(reference: str) -> str:
    """The registry a reference names, as docker reads it (no host part: Docker Hub)."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


@functools.cache
def registry_config(socket: str) -> dict[str, Any]:
    """The daemon's `RegistryConfig` (`docker info`: its mirrors, insecure registries and CIDRs); {} where docker
    does not answer in time or says nothing readable (the daemon's defaults then stand)."""
    try:
        code, out, _ = processes.run(_cli(socket), ["info", "--format", "{{json .RegistryConfig}}"],
                                     timeout=REGISTRY_CONFIG_SECONDS, stdout_limit=REGISTRY_CONFIG_LIMIT)
        config = json.loads(out) if code == 0 else {}
    except (ToolError, ValueError, OSError):
        return {}
    return config if isinstance(config, dict) else {}


def _daemon_verifies_tls(socket: str, registry: str) -> bool:
    """Whether the daemon talks to `registry` over verified HTTPS (its insecure-registries say otherwise)."""
    return not insecure_registry(registry_config(socket), registry)


# moby registry/config.go: loopback is an insecure registry unless the daemon is told otherwise.
DEFAULT_INSECURE = ("127.0.0.0/8",)


def insecure_registry(config: dict[str, Any], registry: str) -> bool:
    """Whether the daemon takes `registry` (host[:port]) as insecure (isSecureIndex): its IndexConfigs entry,
    else whether its address is in InsecureRegistryCIDRs (loopback by default). A host name is not resolved:
    only `localhost` and literal addresses are matched against the CIDRs."""
    indexed = (config.get("IndexConfigs") or {}).get(registry)
    if isinstance(indexed, dict) and "Secure" in indexed:
        return not bool(indexed["Secure"])
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return False
    cidrs = config.get("InsecureRegistryCIDRs")
    if not isinstance(cidrs, list):
        cidrs = list(DEFAULT_INSECURE)
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(str(cidr), strict=False):
                return True
        except ValueError:
            continue
    return False


def _check_tls(socket: str, reference: str, tls_verify: bool | None) -> None:
    """docker has no per-pull TLS switch: an explicit --tls-verify must agree with the daemon's settings."""
    if tls_verify is None:
        return
    registry = registry_of(reference)
    verifies = _daemon_verifies_tls(socket, registry)
    if verifies == tls_verify:
        return
    if tls_verify:
        raise UsageError(f"--tls-verify=true, but the docker daemon treats {registry} as an insecure registry; "
                         "remove it from insecure-registries in /etc/docker/daemon.json, or drop --tls-verify")
    raise UsageError(f"--tls-verify=false, but the docker daemon verifies TLS for {registry}; add it to "
                     "insecure-registries in /etc/docker/daemon.json and restart dockerd, or use "
                     "--engine podman")


@contextmanager
def _api(socket: str) -> Iterator[Any]:
    """A docker SDK client for one exchange with the daemon. Its API errors are the caller's to word; a daemon
    that stops answering (or never did) is one line.
    """
    try:
        import docker
        import requests
    except ImportError:
        raise ToolError("the docker SDK for Python is missing; reinstall cdisk (pip install cdisk)") from None

    def stopped(error: Exception) -> ToolError:
        return ToolError(f"the docker daemon stopped answering ({type(error).__name__}); check `docker info` "
                         "and run cdisk again")

    try:
        # version="auto" asks the daemon for its API version already.
        client = docker.APIClient(base_url=f"unix://{socket}", version="auto", timeout=PULL_TIMEOUT)
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise stopped(error) from None
    try:
        yield client
    except docker.errors.APIError:
        raise
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise stopped(error) from None
    finally:
        client.close()


def registry_digest(socket: str, reference: str) -> tuple[str | None, str]:
    """The digest the registry gives for `reference` now (one manifest request, by the daemon), or None and
    why the registry could not say.
    """
    with _api(socket) as client:
        from docker.errors import APIError

        try:
            return str(client.inspect_distribution(reference)["Descriptor"]["digest"]), ""
        except APIError as error:
            return None, str(error.explanation or error)


def _pull(socket: str, reference: str, progress: Progress, platform: str | None = None) -> None:
    progress.stage(f"pulling {reference}")
    layers: dict[str, tuple[int, int]] = {}
    with _api(socket) as client:
        from docker.errors import APIError

        try:
            for event in client.pull(reference, stream=True, decode=True, platform=platform):
                if event.get("error"):
                    raise PullFailed(reference, "docker", pull_reason(str(event["error"])), _LOGIN)
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total") and event.get("status") == "Downloading":
                    layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                    progress.update(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
        except APIError as error:
            raise PullFailed(reference, "docker", pull_reason(str(error.explanation or error)), _LOGIN) from None


def find_image(reference: str, pull: Pull, progress: Progress, tls_verify: bool | None = None,
               platform: str | None = None) -> Image:
    """Find `reference` in docker's store, pulling it as `pull` says.

    docker has no `newer` policy: the registry's digest for the tag (one manifest request) is compared
    with the image's RepoDigests, and the image is pulled only when the tag moved; when the registry cannot
    answer, the local image serves, as with podman's `newer`.

    Raises:
        ImageError: absent with `never`, the pull failed, or it is still absent after pulling.
        ToolError: docker is missing or its daemon does not answer.
    """
    socket = default_socket()
    _check_daemon(socket)
    by_id = looks_like_id(reference)
    local = _inspect(socket, reference)
    if by_id or pull is Pull.NEVER or (pull is Pull.MISSING and local is not None):
        if local is None:
            raise ImageError(_absent(reference, by_id))
        progress.stage(f"found {reference} in docker's store")
        return local[0]
    _check_tls(socket, reference, tls_verify)
    if pull is Pull.NEWER and local is not None:
        progress.stage(f"asking the registry whether {reference} moved")
        current, why = registry_digest(socket, reference)
        if current is None:
            # As podman's `newer`: a registry that cannot answer (offline, or an image built here) leaves
            # the local image in use.
            progress.warn(f"the registry did not answer for {reference} ({pull_reason(why)}): using the local image")
            return local[0]
        if any(d.endswith("@" + current) for d in local[1]):
            return local[0]
    _pull(socket, reference, progress, platform)
    pulled = _inspect(socket, reference)
    if pulled is None:
        raise ImageError(f"pulled {reference} but docker cannot find it afterwards; check `docker images`")
    return pulled[0]


def _absent(reference: str, by_id: bool) -> str:
    if by_id:
        return f"no image with ID {reference} in docker's store, and an ID cannot be pulled; check `docker images`"
    return (f"image {reference} is not in the local store (docker's) and --pull never forbids pulling; check the "
            f"name (`docker images`), or pull it (`docker pull {reference}`) or drop --pull never")


def save(image: Image, workdir: Path) -> list[LayerBlob]:
    """`docker save` of one image into `workdir`; its layers as byte ranges of the archive (nothing extracted)."""
    from cdisk.core.oci import docker_archive

    archive = workdir / "image.tar"
    argv = ["save", "--", image.id]
    socket = default_socket()
    # Onto its standard output, a file made here: with `-o` the client writes a temp file of its own beside the
    # archive and renames it, and a client still ending after cdisk was killed could make that name while the next
    # run removes the directory. The client dies with cdisk (SIGKILL included).
    out = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with processes.running(_cli(socket), argv, stdout=out, stderr=subprocess.PIPE,
                               preexec_fn=processes.die_with_parent) as proc:
            assert proc.stderr is not None
            errors = processes.StderrTail(proc.stderr)
            code = proc.wait()
            err = errors.text()
    finally:
        os.close(out)
    if code != 0:
        # dockerd's answer to an image removed under its save: "No such image", or a layer's file gone ("failed to
        # get digest sha256:…: open …: no such file or directory") — removed, when the image is gone or back with
        # other layer directories (a load makes new cache IDs); else the store lost a file: damage.
        if "no such image" in err.lower() or ("no such file or directory" in err and _replaced(socket, image)):
            raise ImageRemoved("docker", image.reference)
        last = processes.last_line(err, code)
        no_space = "no space" in last.lower()
        if no_space:  # it wrote onto its standard output: say where that was
            last = f"no space left on device writing {archive}"
        hint = "free some space or pass --tmpdir on a larger filesystem" if no_space \
            else (f"check the image with `cdisk verify {image.reference}`; remove it and pull it again"
                  if "no such file or directory" in err else f"check `docker image inspect {image.id}`")
        raise ToolError(f"docker save failed: {last}; {hint}", ["docker", *argv], code, err)
    try:
        return docker_archive.layer_blobs(archive, image.id, image.layers)
    except ImageError as failed:
        # An archive without the image is what a save racing an rmi writes: then that is the answer.
        if isinstance(failed, NoManifest) or _replaced(socket, image):
            raise ImageRemoved("docker", image.reference) from None
        raise


def _replaced(socket: str, image: Image) -> bool:
    """Whether the image is gone from the store, or back with other layer directories than it had."""
    now = _inspect(socket, image.id)
    return now is None or now[0].layer_dirs != image.layer_dirs


class Docker:
    """The docker engine (`seam.Engine`)."""

    name = "docker"
    mounts = False
    copies = True
    stores = True
    cannot_mount = "docker cannot mount an image; use --method layers (as root) or --method save"

    def available(self) -> bool:
        socket = default_socket()  # a remote DOCKER_HOST is refused whether or not docker is installed
        return installed("docker") and answers(socket)

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        found = _inspect(default_socket(), reference)
        if found is None:
            return None
        progress.stage(f"found {reference} in docker's store")
        return found[0]

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        return find_image(request.reference, request.pull, progress, request.tls_verify, request.platform)

    def mount(self, image: Image) -> AbstractContextManager[str]:
        raise UsageError(self.cannot_mount)

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        assert workdir is not None
        return save(image, workdir)

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        raise UsageError("docker has no rootless user namespace cdisk can use; use --method save")

    def load(self, archive: Path) -> None:
        load_archive(str(archive))

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        push(source, ref, tls_verify)


DOCKER = Docker()


def load_archive(archive: str) -> None:
    """Load a docker archive (`docker load`) into the daemon's store; the archive names the image."""
    _docker(default_socket(), ["load", "--quiet", "--input", archive], "load")


def push(name: str, ref: str, tls_verify: bool | None) -> None:
    """`docker push` of NAME as REF. docker has no per-push TLS switch (its daemon's insecure-registries decide),
    so `tls_verify` is not passed on. REF is tagged for the push and untagged after only if this made it: a REF
    that already names the image (docker's own spelling of NAME, say) is pushed as it is, and one that names
    another image is refused rather than moved.
    """
    socket = default_socket()
    wanted = _docker(socket, ["image", "inspect", "--format", "{{.Id}}", "--", name], "image inspect").strip()
    code, out, _ = processes.run(_cli(socket), ["image", "inspect", "--format", "{{.Id}}", "--", ref])
    if code == 0 and out.strip() != wanted:
        raise UsageError(f"--push {ref}: that name is another local image of docker's; remove it or push to "
                         "another REF")
    if code != 0:
        _docker(socket, ["tag", "--", name, ref], "tag")
    try:
        _docker(socket, ["push", "--quiet", "--", ref], f"push to {ref}")
    finally:
        if code != 0:
            processes.run(_cli(socket), ["rmi", "--no-prune", "--", ref])
