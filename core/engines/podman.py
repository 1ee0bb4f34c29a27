"""The podman engine, and the only module that touches podman: the REST API through podman-py, the CLI
through plumbum.

The API serves lookups, inspection and pulls when the user's socket answers; without one, local
lookups go through `podman image inspect` and only a pull starts a private `podman system service`,
which lives exactly as long as the `connect()` block. Whether a tag moved (`--pull newer`) is asked of the
registry by skopeo first where it is installed: an unchanged image then costs no service, and a registry that
does not answer is told (podman's own `newer` keeps the local image without a word). The CLI serves what the
API lacks: save, image mount/unmount, unshare.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cdisk.core import leftovers, processes
from cdisk.core.engines import store_lookup
from cdisk.core.engines.common import (
    answers,
    has_registry,
    installed,
    layer_dirs_of,
    looks_like_id,
    pull_reason,
    socket_trusted,
)
from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, ImageRemoved, Interrupted, NoManifest, PullFailed, ToolError
from cdisk.core.progress import Progress
from cdisk.core.request import ImageRequest, Pull

if TYPE_CHECKING:  # LayerBlob's module only for a run that saves: start-up stays cheap
    from cdisk.core.oci.blob import LayerBlob

SERVICE_START_SECONDS = 20.0
_LOGIN = "check the name, the registry and your login (`podman login`)"


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


def runtime_dir_follows_tmpdir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> bool:
    """Whether podman would take its runtime dir from TMPDIR here: then another TMPDIR would give it another
    runtime dir, and with it other storage locks than every other podman of this user takes.

    podman (pkg/util.GetRuntimeDir) uses XDG_RUNTIME_DIR, else /run/user/UID when it is the user's own 0700
    directory, else $TMPDIR/podman-run-UID (a cron job of a user without a login session); root's is /run.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    rootless_uid = env.get("_CONTAINERS_ROOTLESS_UID")
    if (euid == 0 and not rootless_uid) or env.get("XDG_RUNTIME_DIR"):
        return False
    uid = int(rootless_uid or euid)
    try:
        own = os.stat(f"/run/user/{uid}")
    except OSError:
        return True
    return not (own.st_uid == euid and stat.S_IMODE(own.st_mode) & 0o700 == 0o700)


def engine_tmpdir(tmpdir: str) -> AbstractContextManager[object]:
    """Run podman in this block with TMPDIR=`tmpdir`, a directory of cdisk's own that it removes: what podman
    leaves in TMPDIR (/var/tmp by default) when a save or a pull fails (its copy of a layer) goes with it.

    Not where podman's runtime dir follows TMPDIR (`runtime_dir_follows_tmpdir`): there podman keeps its own
    TMPDIR, and what a failed save leaves is podman's to leave.
    """
    from plumbum import local

    return nullcontext() if runtime_dir_follows_tmpdir() else local.env(TMPDIR=tmpdir)


@contextmanager
def private_service() -> Iterator[str]:
    """Start `podman system service` on a socket in a private temp dir; stop it and remove the dir after."""

    # The service's directory is held under its lock while it runs; those of runs killed with SIGKILL (whose
    # service the kernel stopped: die_with_parent) are removed first.
    leftovers.sweep(tempfile.gettempdir(), (leftovers.SERVICE,))
    lock, workdir = leftovers.locked_dir(None, "cdisk-podman-")
    socket = os.path.join(workdir, "podman.sock")
    scratch = os.path.join(workdir, "tmp")  # the service's TMPDIR (a pull's layer copies): removed with workdir
    log: IO[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        os.mkdir(scratch, 0o700)
        log = open(os.path.join(workdir, "service.log"), "wb")  # noqa: SIM115 - closed in finally
        with local_store(), engine_tmpdir(scratch):
            proc = podman_cli().popen(["system", "service", "--time=0", f"unix://{socket}"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True, preexec_fn=processes.die_with_parent)
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while not answers(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = Path(workdir, "service.log").read_text(errors="replace").strip()
                raise ToolError(f"podman system service did not start: {detail or 'no output'}; "
                                "check `podman info` works for this user",
                                processes.argv_of(proc), proc.poll(), detail)
            time.sleep(0.02)
        yield socket
    finally:
        if proc is not None:
            processes.stop(proc, grace=10)
        if log is not None:
            log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        os.close(lock)


@contextmanager
def connect(socket: str, live: bool, progress: Progress) -> Iterator[Any]:
    """A podman-py client: to `socket` when it is `live`, else to a private service for this block."""
    with ExitStack() as stack:
        if live:
            progress.stage(f"podman API at {socket}")
        else:
            progress.stage(f"no podman API at {socket}: starting a private podman service")
            socket = stack.enter_context(private_service())
        client = _client(socket)
        stack.callback(client.close)
        yield client


def _inspect(client: Any, reference: str, trusted: bool) -> Image | None:
    from podman.errors import ImageNotFound

    try:
        found = client.images.get(reference)
    except ImageNotFound:
        return None
    return _image(reference, found.attrs, trusted)


def _pull(client: Any, reference: str, policy: str, tls_verify: bool | None, progress: Progress,
          platform: str | None = None) -> None:
    from podman.errors import APIError

    progress.stage(f"pulling {reference}" if policy == "always" else f"asking the registry whether {reference} moved")
    # The compat stream reports bytes per layer; podman-py's pull() would re-parse the reference
    # and mangle digests and ports, so the endpoint is called with the reference as given.
    params: dict[str, str | bool] = {"reference": reference, "policy": policy, "compatMode": True}
    # Only an explicit --tls-verify is sent: podman applies tlsVerify only when the query names it,
    # and otherwise lets registries.conf decide (`insecure = true` for a plain-HTTP mirror), as
    # `podman pull` does.
    if tls_verify is not None:
        params["tlsVerify"] = "true" if tls_verify else "false"
    if platform:
        os_name, arch, *variant = platform.split("/")
        params.update({"OS": os_name, "Arch": arch, **({"Variant": variant[0]} if variant else {})})
    try:
        response = client.api.post("/images/pull", params=params, stream=True)
        response.raise_for_status()
        layers: dict[str, tuple[int, int]] = {}
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event.get("error"):
                raise PullFailed(reference, "podman", pull_reason(str(event["error"])), _LOGIN)
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                progress.update(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
    except APIError as error:
        if isinstance(error.__cause__, OSError):  # podman-py's wrapper of a connection that failed: no answer
            raise
        raise PullFailed(reference, "podman", pull_reason(_said(error)), _LOGIN) from None


def _said(error: Any) -> str:
    """What podman said of a failed request: podman 5 answers with a JSON body (`{"message": …}`), 4.x with text."""
    text = str(error.explanation or error)
    try:
        body = json.loads(text)
    except ValueError:
        return text
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else text


def find_image(reference: str, pull: Pull, progress: Progress, tls_verify: bool | None = None,
               platform: str | None = None) -> Image:
    """Find `reference` in the local store, pulling it as podman's `--pull` policy says.

    `tls_verify` None leaves HTTPS and certificate checks to registries.conf; True or False overrides it.

    The user's live podman API serves when there is one. When there is none and the local store can
    answer (`never`, `missing` with the image present, `newer` with the tag where it was), the store's own files
    answer in ~1 ms (`store_lookup`), else `podman image inspect` in ~40 ms, where a private service would cost
    ~0.3 s; a private service is started only to
    pull (or, without skopeo, to let podman's own `newer` ask the registry).

    Raises:
        ImageError: absent with `never`, or it is still absent after pulling.
        PullFailed: the pull failed.
        ToolError: podman failed or the API stopped answering.
    """
    by_id = looks_like_id(reference)
    looks_first = pull is not Pull.ALWAYS or by_id
    socket = default_socket()
    live = answers(socket)
    if not live and looks_first:
        # The store's own files answer first where they can (no podman started: ~35 ms less), podman's CLI otherwise.
        found = store_lookup.lookup(reference)
        how = "its files" if found is not None else "podman CLI"
        found = found or _inspect_cli(reference)
        if found is not None:
            progress.stage(f"found {reference} in the local store ({how}: no API at {socket})")
            if (kept := _kept(found, pull, by_id, tls_verify, platform, progress)) is not None:
                return kept
        elif pull is Pull.NEVER or by_id:
            raise ImageError(_absent(reference, by_id))
    import requests  # only on the API path: the CLI lookup above must not pay for it

    # A private service is ours; the user's API must be root's or the user's own for its layer directories.
    trusted = not live or socket_trusted(socket)
    with connect(socket, live, progress) as client:
        try:
            # Without a live API the local store was asked above already.
            local = _inspect(client, reference, trusted) if live and looks_first else None
            if local is not None and (kept := _kept(local, pull, by_id, tls_verify, platform, progress)) is not None:
                return kept
            if local is None and (pull is Pull.NEVER or by_id):
                raise ImageError(_absent(reference, by_id))
            # `newer` is podman's own policy: it asks the registry for the tag's digest and pulls only
            # when the tag moved; for `missing` we already know the image is absent.
            _pull(client, reference, "newer" if pull is Pull.NEWER else "always", tls_verify, progress, platform)
            pulled = _inspect(client, reference, trusted)
        except requests.RequestException as error:  # podman-py's APIError among them
            raise api_failed(error) from None
    if pulled is None:
        raise ImageError(f"pulled {reference} but podman cannot find it afterwards; check `podman images`")
    return pulled


def api_failed(error: BaseException) -> ToolError:
    """A request to podman's API that failed otherwise than by refusing the pull: no answer at all (a connection
    that broke — podman-py wraps it in an APIError: podman 5 sends a pull's headers only once the pull has begun,
    so a service that dies before fails the request itself, where 4.x's died mid-stream), or an answer that is
    an error (said with podman's own message)."""
    from podman.errors import APIError

    cause = error.__cause__ if isinstance(error.__cause__, OSError) else None
    if isinstance(error, APIError) and cause is None:
        what = f"podman's API failed: {pull_reason(_said(error))}"
    else:
        what = f"the podman API stopped answering ({type(cause or error).__name__})"
    return ToolError(f"{what}; check that podman works (`podman info`) and run cdisk again")


def _kept(local: Image, pull: Pull, by_id: bool, tls_verify: bool | None, platform: str | None,
          progress: Progress) -> Image | None:
    """The local image where no pull is due, or None: `never` and `missing` keep it; `newer` keeps it when the
    registry says the tag is where it was (skopeo asks, one manifest request) or does not answer (said as a
    warning, as docker's engine says it). None where a pull is due, or where skopeo is missing or the name is
    short: podman's own `newer` decides then.
    """
    if pull in (Pull.NEVER, Pull.MISSING) or by_id or "@" in local.reference:  # a digest names one image
        return local
    if pull is not Pull.NEWER or not has_registry(local.reference):
        return None
    from cdisk.core.engines import skopeo

    if not skopeo.installed():
        return None
    from cdisk.core.oci.platform import host_platform

    progress.stage(f"asking the registry whether {local.reference} moved")
    current, why = skopeo.tag_digests(local.reference, tls_verify, platform or host_platform())
    if not current:
        # As podman's `newer` does, silently: a registry that cannot answer leaves the local image in use.
        progress.warn(f"the registry did not answer for {local.reference} ({pull_reason(why)}): using the "
                       "local image")
        return local
    return local if current & set(local.digests) else None


def _absent(reference: str, by_id: bool) -> str:
    if by_id:
        return (f"no image with ID {reference} in the local store (podman's), and an ID cannot be pulled; "
                "check `podman images`")
    return (f"image {reference} is not in the local store (podman's) and --pull never forbids pulling; "
            f"check the name (`podman images`), or pull it (`podman pull {reference}`) or drop --pull never")


def _image(reference: str, attrs: dict[str, Any], trusted: bool = True) -> Image:
    driver = attrs.get("GraphDriver") or {}
    return Image(reference=reference, id=str(attrs["Id"]).removeprefix("sha256:"),
                 digest=attrs.get("Digest") or "", architecture=attrs.get("Architecture") or "",
                 size=int(attrs.get("Size") or 0), layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
                 store=str(driver.get("Name") or ""), layer_dirs=layer_dirs_of(attrs, trusted), engine="podman",
                 os=str(attrs.get("Os") or ""), variant=str(attrs.get("Variant") or ""),
                 digests=_digests(attrs))


def _digests(attrs: dict[str, Any]) -> tuple[str, ...]:
    named = [str(d).rsplit("@", 1)[1] for d in attrs.get("RepoDigests") or [] if "@" in str(d)]
    return tuple(dict.fromkeys(d for d in (str(attrs.get("Digest") or ""), *named) if d))


def _inspect_cli(reference: str) -> Image | None:
    with local_store():
        argv = ["image", "inspect", "--format", "json", "--", reference]
        code, out, err = processes.run(podman_cli(), argv)
    if code != 0:
        if "image not known" in err or "no such image" in err.lower():  # not "no such file": a failure
            return None
        if "cannot specify 64-byte hexadecimal strings" in err:  # a full ID no image has any more: podman then
            return None                                          # reads it as a name, which may not be 64 hex digits
        if "layer not known" in err:  # the image's record outlived its layers for a moment: an rmi under way
            raise ImageRemoved("podman", reference)
        raise ToolError(f"podman image inspect failed: {processes.last_line(err, code)}; check `podman info`",
                        ["podman", *argv], code, err)
    found = json.loads(out)
    return _image(reference, found[0]) if found else None


def save_oci_dir(image_id: str, destination: str, tmpdir: str) -> None:
    """`podman save --uncompressed --format oci-dir` of one image into `destination` (must not exist).

    podman runs with TMPDIR=`tmpdir`, a directory of cdisk's own that it removes: a failed save leaves its copy
    of a layer in TMPDIR (/var/tmp by default), which nothing else would ever remove.
    """
    argv = ["save", "--quiet", "--uncompressed", "--format", "oci-dir", "-o", destination, "--", image_id]
    with local_store(), engine_tmpdir(tmpdir):
        code, _, err = processes.run(podman_cli(), argv, preexec_fn=processes.die_with_parent)
    if code != 0:
        last = processes.last_line(err, code)
        hint = "free some space or pass --tmpdir on a larger filesystem" if "no space" in last.lower() \
            else "check `podman image inspect " + image_id + "`"
        raise ToolError(f"podman save failed: {last}; {hint}", ["podman", *argv], code, err)


@contextmanager
def mount_image(image_id: str, reference: str = "") -> Iterator[str]:
    """`podman image mount` the image; unmount exactly this one mount when the block ends.

    Mounts are reference-counted by containers/storage, so one `unmount` (never `--all`, never
    `--force`) takes back exactly what this block added and leaves other users' mounts alone. Both
    commands run in a session of their own, so the Ctrl-C a terminal sends to our process group
    cannot cut them half-way; a mount that completes while we are being interrupted is given back.
    A run killed outright leaves its mount counted: its record (`_MountRecord`) tells the next mount to give it
    back.
    """
    leftovers.sweep(leftovers.runtime_dir(), (leftovers.MOUNT,), undo=_give_back_dead_runs_mount)
    with _MountRecord(image_id) as record:
        argv = ["image", "mount", "--", image_id]
        with local_store(), processes.running(podman_cli(), argv, group=True, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE) as proc:
            try:
                out, err = proc.communicate()
            except Interrupted:
                late, _ = proc.communicate()  # the signal handlers now ignore further signals: this wait is safe
                if proc.returncode == 0:
                    _unmount(image_id, late.decode(errors="replace").strip())
                raise
        code = proc.returncode
        if code != 0 and "image not known" in err.decode(errors="replace"):
            raise ImageRemoved("podman", reference or image_id[:12])
        if code != 0:
            raise ToolError(f"podman image mount failed: {processes.last_line(err.decode(errors='replace'), code)}; "
                            "use --method save", ["podman", *argv], code, err.decode(errors="replace"))
        root = out.decode().strip()
        record.mounted(root)
        try:
            yield root
        finally:
            _unmount(image_id, root)
            record.given_back()


class _MountRecord:
    """A record of this run's image mount in the runtime dir (`.cdisk-mount-XXXXXXXX`, held under its lock): the
    image, the mount point, the store (CONTAINERS_STORAGE_CONF) and the boot. Removed once the mount is given back;
    a run killed with SIGKILL leaves it, and the next mount's sweep gives the mount back
    (`_give_back_dead_runs_mount`). Written "mounted" only once podman said so: a record of a mount that may not
    have happened is removed, never acted on, since its count could be another user's.
    """

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        self.fd = -1
        self.path = ""
        self.done = False

    def __enter__(self) -> _MountRecord:
        with suppress(OSError):  # no record where none can be written: the mount goes on as before
            self.fd, self.path = leftovers.locked_file(leftovers.runtime_dir(), ".cdisk-mount-")
        return self

    def mounted(self, root: str) -> None:
        if self.fd < 0:
            return
        record = {"image": self.image_id, "root": root, "storage_conf": os.environ.get("CONTAINERS_STORAGE_CONF"),
                  "boot": _boot_id()}
        with suppress(OSError):
            os.pwrite(self.fd, json.dumps(record).encode(), 0)

    def given_back(self) -> None:
        self.done = True

    def __exit__(self, *_: object) -> None:
        if self.fd < 0:
            return
        try:
            if self.done or os.fstat(self.fd).st_size == 0:  # an unmount that failed leaves it for the next run
                with suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return boot.read(64).strip()
    except OSError:
        return ""


def _give_back_dead_runs_mount(fd: int) -> bool:
    """Give back the mount a dead run's record names (`_MountRecord`); whether the record may go. A record of
    another store is kept for a run of that store; one of another boot, or unreadable, names nothing counted now."""
    try:
        record = json.loads(os.pread(fd, 64 * 1024, 0) or b"{}")
        image, root = str(record["image"]), str(record["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return True
    if record.get("storage_conf") != os.environ.get("CONTAINERS_STORAGE_CONF"):
        return False
    if record.get("boot") != _boot_id() or not re.fullmatch(r"[0-9a-f]{64}", image) or not _is_mount_point(root):
        return True
    with suppress(ToolError):
        _unmount(image, root)
    return True


def _unmount(image_id: str, root: str = "") -> None:
    code, err = _unmount_image(image_id)
    if code != 0 and "image not known" in err and root:
        if _give_back(root):
            return
        raise ToolError(f"podman image unmount failed: {processes.last_line(err, code)}, and the image's layer is "
                        f"still mounted at {root}; run `umount {root}`", ["podman", "image", "unmount", "--",
                                                                           image_id], code, err)
    if code != 0:
        raise ToolError(f"podman image unmount failed: {processes.last_line(err, code)}; "
                        f"run `podman image unmount {image_id}`", ["podman", "image", "unmount", "--", image_id],
                        code, err)


# How often `_give_back` asks which images hold the layer before it gives up (each asking is two podman runs).
_GIVE_BACK_TRIES = 8


def _give_back(root: str) -> bool:
    """Give back the mount at `root` of an image removed meanwhile (an rmi or prune of another job); whether it is
    gone.

    The image's top layer went with it only if no other image holds that layer: else the layer lives on, mounted,
    under another image's name (or this one's, loaded again), and is given back through that image — mounts are
    counted per layer. A layer that is no image's top layer (it lies below others) no podman command reaches: its
    mount is detached here, once two listings in a row found no image on it (a load meanwhile would make one whose
    mount shares it); containers/storage mounts it again when next asked (`layers.go` Mount: a mount gone behind
    its back). Listings that fail detach nothing.
    """
    layer = os.path.basename(os.path.dirname(root))
    empty = 0
    for _asked in range(_GIVE_BACK_TRIES):
        if not _is_mount_point(root):
            return True
        # A listing fails when an image goes between its two questions, and the image it names may go before
        # its unmount (a prune under way): ask again, until the layer is given back or no image holds it.
        others = _images_on_layer(layer)
        if others and any(_unmount_image(other)[0] == 0 for other in others):
            return True
        empty = empty + 1 if others == [] else 0
        if empty == 2:
            return _detach(root)
    return not _is_mount_point(root)


def _detach(path: str) -> bool:
    import ctypes

    return bool(ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(path), 2) == 0)  # MNT_DETACH


def _unmount_image(image_id: str) -> tuple[int, str]:
    with local_store():
        code, _, err = processes.run(podman_cli(), ["image", "unmount", "--", image_id], group=True)
    return code, err


def _is_mount_point(path: str) -> bool:
    """Whether `path` is a mount point in this process's mount namespace (mountinfo's fifth field, octal escapes
    as the kernel writes them)."""
    escaped = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        return any(line.split(" ", 5)[4] == escaped for line in mountinfo)


def _images_on_layer(layer_id: str) -> list[str] | None:
    """The IDs of the images in the store whose top layer is `layer_id` (its directory `…/overlay/<id>/diff`);
    None when podman could not tell."""
    with local_store():
        code, out, _ = processes.run(podman_cli(), ["images", "--all", "--quiet", "--no-trunc"])
        ids = sorted({line.strip().removeprefix("sha256:") for line in out.splitlines() if line.strip()})
        if code != 0:
            return None
        if not ids:
            return []
        argv = ["image", "inspect", "--format", "{{.Id}} {{.GraphDriver.Data.UpperDir}}", "--"]
        code, out, _ = processes.run(podman_cli(), [*argv, *ids])
        if code != 0:  # an image gone between the two questions: each asked alone, the gone ones left out
            answers = [processes.run(podman_cli(), [*argv, one]) for one in ids]
            if any(code != 0 and "image not known" not in err for code, _, err in answers):
                return None  # podman failing: no guess
            out = "".join(out for code, out, _ in answers if code == 0)
    found = []
    for line in out.splitlines():
        image_id, _, upper = line.partition(" ")
        if os.path.basename(os.path.dirname(upper.strip())) == layer_id:
            found.append(image_id)
    return found


@contextmanager
def unshare(argv: Sequence[str], stdout: int, stderr: IO[Any] | int) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` as a child in rootless podman's user namespace (`podman unshare`), in a session of its own,
    stopped and reaped when the block ends.
    """
    with local_store(), processes.running(podman_cli(), ["unshare", *argv], group=True, stdout=stdout,
                                          stderr=stderr) as proc:
        yield proc


class Podman:
    """The podman engine (`seam.Engine`)."""

    name = "podman"
    mounts = True
    copies = True
    stores = True
    cannot_mount = ""

    def available(self) -> bool:
        default_socket()  # a remote CONTAINER_HOST is refused whether or not podman is installed
        return installed("podman")

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        try:
            return find_image(reference, Pull.NEVER, progress)
        except ImageError:
            return None

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        return find_image(request.reference, request.pull, progress, request.tls_verify, request.platform)

    def mount(self, image: Image) -> AbstractContextManager[str]:
        return mount_image(image.id, image.reference)

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        from cdisk.core.oci import layout

        assert workdir is not None
        saved = workdir / "layout"
        scratch = workdir / "tmp"  # podman's TMPDIR: removed with workdir, whatever podman leaves there
        scratch.mkdir(mode=0o700)
        try:
            save_oci_dir(image.id, str(saved), str(scratch))
            return layout.layer_blobs(saved, image.id)
        except (ToolError, ImageError) as failed:
            # A save racing an rmi fails, or writes a layout without the image (also when it was loaded again
            # before the failure could be looked into): then that is the answer.
            gone_then = isinstance(failed, ToolError) and "image not known" in failed.stderr
            if isinstance(failed, NoManifest) or gone_then or _inspect_cli(image.id) is None:
                raise ImageRemoved("podman", image.reference) from None
            raise

    def in_user_namespace(self, argv: Sequence[str], stdout: int,
                          stderr: IO[Any] | int) -> AbstractContextManager[subprocess.Popen[bytes]]:
        return unshare(argv, stdout, stderr)

    def load(self, archive: Path) -> None:
        load_archive(str(archive))

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        push(source, ref, tls_verify)


PODMAN = Podman()


def load_archive(archive: str) -> None:
    """Load a docker archive into podman's store (`podman load`); the archive names the image."""
    argv = ["load", "--quiet", "--input", archive]
    with local_store():
        code, _, err = processes.run(podman_cli(), argv)
    if code != 0:
        raise ToolError(f"podman load failed: {processes.last_line(err, code)}; check `podman info`",
                        ["podman", *argv], code, err)


def push(name: str, ref: str, tls_verify: bool | None) -> None:
    """`podman push NAME REF`; `tls_verify` None leaves it to registries.conf."""
    argv = ["push", "--quiet", *([f"--tls-verify={str(tls_verify).lower()}"] if tls_verify is not None else []),
            "--", name, ref]
    with local_store():
        code, _, err = processes.run(podman_cli(), argv)
    if code != 0:
        raise ToolError(f"podman push to {ref} failed: {processes.last_line(err, code)}; check the registry and "
                        "your login (podman login)", ["podman", *argv], code, err)
