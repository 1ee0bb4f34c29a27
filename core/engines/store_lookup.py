"""An image of podman's local store looked up in containers/storage's own files, without starting podman (whose
`podman image inspect` costs ~35 ms of a Go binary starting, most of a small convert's fixed cost).

What podman reads, read the same way (containers/storage `images.go`, `layers.go`, `store.go`; containers/image
`storage_src.go`; libimage `inspect.go`):

- `<graphroot>/overlay-images/images.json`: each image's ID, names, digest, top layer, and the sizes and digests of
  its "big data" (the manifest, the config), each kept beside it as `<graphroot>/overlay-images/<id>/<key>`, a key
  that is not plain `[a-z0-9.]` base64-encoded behind a `=`;
- `<graphroot>/overlay-layers/layers.json`: each layer's parent and uncompressed size;
- both read under their store's lock (`overlay-layers/layers.lock`, then `overlay-images/images.lock`, the order
  podman takes them), held shared as podman's readers hold it (`store_pin`).

Only root's store or this user's own, located as containers/storage locates it with no `--root`, no
`CONTAINERS_STORAGE_CONF`, no STORAGE_DRIVER/STORAGE_OPTS and no remote (CONTAINER_HOST) involved, with the overlay
driver and no additional image store, transient store or drop-in configuration; only a name that needs no
resolution (a registry, a tag: `localhost/vm:1`, `quay.io/x/y` as `…:latest`) or a full image ID; only a manifest of
one image (not a list). Anything else — a short name, a digest reference, a prefix of an ID, a lock a writer keeps, a
file that does not parse, an image not found — is answered by podman as before: `lookup()` then says None.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from cdisk.core.engines import store_pin
from cdisk.core.engines.common import has_registry
from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError

_SYSTEM_CONFS = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")
_ROOT_GRAPHROOT = "/var/lib/containers/storage"
# The variables that point podman at another store or another host than the one found here.
_ELSEWHERE = ("CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS",
              "_CONTAINERS_ROOTLESS_UID", "_CONTAINERS_USERNS_CONFIGURED")
# The drivers whose directories, beside overlay's, would make containers/storage's choice of driver its own guess.
_OTHER_DRIVERS = ("aufs", "btrfs", "devicemapper", "vfs", "zfs")
_FULL_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_PLAIN_KEY = re.compile(r"^[0-9a-z.]*$")
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_SINGLE_MANIFESTS = ("application/vnd.oci.image.manifest.v1+json",
                     "application/vnd.docker.distribution.manifest.v2+json")
_MAX_JSON = 64 << 20  # images.json of a store with thousands of images stays far below


def lookup(reference: str, root: str | None = None) -> Image | None:
    """The image `reference` names in podman's local store (the one at `root`, default `graph_root()`), read from
    the store's files as podman reads them; None where these files cannot answer for certain (podman is asked then,
    as before). Never pulls, never waits."""
    key = _key(reference)
    if key is not None and root is None:
        root = graph_root()
    if key is None or root is None:
        return None
    try:
        with _held(os.path.join(root, "overlay-layers", "layers.lock"),
                   os.path.join(root, "overlay-images", "images.lock")) as held:
            if not held:
                return None
            images = _json_file(os.path.join(root, "overlay-images", "images.json"))
            layers = _json_file(os.path.join(root, "overlay-layers", "layers.json"))
            found = _find(images, key)
            return None if found is None else _image(reference, root, found, layers)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _key(reference: str) -> tuple[str, str] | None:
    """("id", ID) for a full image ID, ("name", NAME:TAG) for a name that needs no resolution, else None."""
    full = _FULL_ID.match(reference)
    if full:
        return "id", full.group(1)
    if "@" in reference or not has_registry(reference):
        return None
    domain, _, path = reference.partition("/")
    if domain in ("docker.io", "index.docker.io") or not path:  # podman writes docker.io/library/NAME
        return None
    tagged = ":" in reference.rsplit("/", 1)[1]
    return "name", reference if tagged else reference + ":latest"


def graph_root() -> str | None:
    """The graph root of root's or this user's own overlay store, as containers/storage finds it with no flags; None
    where it cannot be told for certain here (another store, driver or host is involved)."""
    if any(os.environ.get(name) for name in _ELSEWHERE):
        return None
    if os.path.isdir("/etc/containers/storage.conf.d") or os.path.isdir("/usr/share/containers/storage.conf.d"):
        return None
    if os.geteuid() == 0:
        conf = _first_existing(_SYSTEM_CONFS)
        settings = _settings(conf) if conf else {}
        if settings is None:
            return None
        root = str(settings.get("graphroot") or _ROOT_GRAPHROOT)
    else:
        home = os.environ.get("HOME", "")
        if not home.startswith("/"):
            return None
        own = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers",
                           "storage.conf")
        conf = own if os.path.exists(own) else _first_existing(_SYSTEM_CONFS)
        settings = _settings(conf) if conf else {}
        if settings is None:
            return None
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
        default = os.path.join(data, "containers", "storage")
        root = str(settings.get("graphroot") if conf == own else settings.get("rootless_storage_path") or "") \
            or default
        root = root.replace("$HOME", home).replace("$UID", str(os.geteuid()))
        if "$" in root:
            return None
    driver = settings.get("driver") or ""
    if not os.path.isabs(root) or driver not in ("", "overlay"):
        return None
    if not driver and (not os.path.isdir(os.path.join(root, "overlay"))
                       or any(os.path.isdir(os.path.join(root, other)) for other in _OTHER_DRIVERS)):
        return None
    return os.path.normpath(root)


def _first_existing(paths: tuple[str, ...]) -> str | None:
    return next((path for path in paths if os.path.exists(path)), None)


def _settings(conf: str) -> dict[str, Any] | None:
    """The `[storage]` table of a storage.conf; None where it asks for what this lookup does not read (another
    image store beside the graph root, a transient store) or does not parse."""
    import tomllib

    try:
        with open(conf, "rb") as file:
            storage = tomllib.load(file).get("storage") or {}
    except (OSError, ValueError):
        return None
    if not isinstance(storage, dict):
        return None
    options = storage.get("options") or {}
    if (storage.get("imagestore") or storage.get("transient_store") or not isinstance(options, dict)
            or options.get("additionalimagestores") or (options.get("overlay") or {}).get("imagestore")):
        return None
    return storage


# A writer's lock is waited for this long (podman's writers hold it for milliseconds, a pull for as long as it
# writes); past it podman is asked, and waits as it does.
LOCK_WAIT_SECONDS = 1.0


@contextmanager
def _held(*paths: str) -> Iterator[bool]:
    """Each lock file's whole-file POSIX lock held shared, in order, while the block runs (`store_pin`'s reader's
    lock); False, nothing held, where one is missing or unreadable or a writer held it past LOCK_WAIT_SECONDS."""
    with ExitStack() as stack:
        for path in paths:
            try:
                fd = store_pin.lock_shared(path, lambda _: None, LOCK_WAIT_SECONDS)
            except ImageError:
                fd = None
            if fd is None:
                yield False
                return
            stack.callback(os.close, fd)
        yield True


def _json_file(path: str) -> Any:
    with open(path, "rb") as file:
        data = file.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ValueError(f"{path} is larger than {_MAX_JSON} bytes")
    return json.loads(data)


def _find(images: list[dict[str, Any]], key: tuple[str, str]) -> dict[str, Any] | None:
    kind, wanted = key
    found = [image for image in images
             if (image["id"] == wanted if kind == "id" else wanted in (image.get("names") or ()))]
    return found[0] if len(found) == 1 else None


def big_data_name(key: str) -> str:
    """The file name containers/storage keeps an image's big data item `key` under (`makeBigDataBaseName`)."""
    return key if _PLAIN_KEY.match(key) else "=" + base64.b64encode(key.encode()).decode()


def _big_data(root: str, image_id: str, key: str) -> bytes:
    with open(os.path.join(root, "overlay-images", image_id, big_data_name(key)), "rb") as file:
        data = file.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ValueError(f"{key} of image {image_id} is larger than {_MAX_JSON} bytes")
    return data


def _image(reference: str, root: str, record: dict[str, Any], layers: list[dict[str, Any]]) -> Image | None:
    """The `Image` `podman image inspect` gives for the image `record` of images.json; None where podman would read
    it otherwise (a manifest list, a schema 1 manifest)."""
    image_id = str(record["id"])
    if not _HEX_ID.match(image_id):  # a name in a path below: only what podman itself writes there
        return None
    manifest = json.loads(_big_data(root, image_id, "manifest"))
    media = manifest.get("mediaType") or ("application/vnd.oci.image.manifest.v1+json"
                                          if manifest.get("schemaVersion") == 2 and "config" in manifest else "")
    if media not in _SINGLE_MANIFESTS:
        return None
    # As podman reads it: the config its manifest names, from the store, whose digests podman checked as it stored
    # them (no hash here: hashlib's OpenSSL costs more than the rest of the lookup).
    config = json.loads(_big_data(root, image_id, str(manifest["config"]["digest"])))
    by_id = {str(layer["id"]): layer for layer in layers}
    chain: list[str] = []
    size = 0
    layer_id = str(record.get("layer") or "")
    while layer_id:
        if layer_id in chain or len(chain) > 1000:
            return None
        if not _HEX_ID.match(layer_id):
            return None
        layer = by_id[layer_id]
        diff_size = layer.get("diff-size")
        if not isinstance(diff_size, int) or diff_size < 0:  # podman would compute it from the layer's files
            return None
        chain.append(layer_id)
        size += diff_size
        layer_id = str(layer.get("parent") or "")
    size += sum(int(value) for value in (record.get("big-data-sizes") or {}).values())
    digest = str(record.get("digest") or "")
    if not digest:  # podman would take the first of the manifests' digests, in an order of its own
        return None
    others = sorted({str(d) for name, d in (record.get("big-data-digests") or {}).items()
                     if name.startswith("manifest")} - {digest})
    overlay = os.path.join(root, "overlay")
    return Image(reference=reference, id=image_id, digest=digest, architecture=str(config.get("architecture") or ""),
                 size=size, layers=tuple(str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or ()),
                 store="overlay", layer_dirs=tuple(os.path.join(overlay, layer, "diff") for layer in chain),
                 engine="podman", os=str(config.get("os") or ""), variant=str(config.get("variant") or ""),
                 digests=(digest, *others) if record.get("names") else (digest,))
