"""`engines.store_lookup`: an image read from a containers/storage overlay store's own files (laid out here as podman
lays them out, in a temp dir), and every case those files cannot answer for certain handed back to podman (None).
The same answers as `podman image inspect` on real images: tests/e2e/test_fixed_cost.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdisk.core.engines import store_lookup
from cdisk.core.engines.seam import Image

ID = "1" * 64
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    print("shared")
else:
    print("free")
"""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _store(root: Path, layers: int = 2, manifest: dict[str, Any] | None = None, names: tuple[str, ...] = (
        "localhost/vm:1",), config: bytes | None = None, variant: str = "") -> Image:
    """A store holding one image of `layers` layers; the `Image` podman's inspect gives of it."""
    layer_records, diff_ids = [], []
    for n in range(layers):
        layer_id = f"{n + 2}" * 64
        record: dict[str, Any] = {"id": layer_id, "diff-digest": f"sha256:{layer_id}", "diff-size": 1000 * (n + 1)}
        if n:
            record["parent"] = layer_records[-1]["id"]
        layer_records.append(record)
        diff_ids.append(f"sha256:{layer_id}")
        (root / "overlay" / layer_id / "diff").mkdir(parents=True)
    config = config or json.dumps({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers",
                                   "diff_ids": diff_ids}, **({"variant": variant} if variant else {})}).encode()
    manifest_bytes = json.dumps(manifest or {"schemaVersion": 2, "mediaType": store_lookup._SINGLE_MANIFESTS[0],
                                             "config": {"digest": _digest(config), "size": len(config)},
                                             "layers": []}).encode()
    other = _digest(b"another manifest")
    big = {"manifest": manifest_bytes, f"manifest-{_digest(manifest_bytes)}": manifest_bytes, _digest(config): config}
    (root / "overlay-images" / ID).mkdir(parents=True)
    for key, data in big.items():
        (root / "overlay-images" / ID / store_lookup.big_data_name(key)).write_bytes(data)
    image = {"id": ID, "digest": _digest(manifest_bytes), "names": list(names), "layer": layer_records[-1]["id"],
             "big-data-names": list(big), "big-data-sizes": {key: len(data) for key, data in big.items()},
             "big-data-digests": {**{key: _digest(data) for key, data in big.items()}, "manifest-x": other}}
    (root / "overlay-images" / "images.json").write_text(json.dumps([image]))
    (root / "overlay-images" / "images.lock").touch()
    (root / "overlay-layers").mkdir()
    (root / "overlay-layers" / "layers.json").write_text(json.dumps(layer_records))
    (root / "overlay-layers" / "layers.lock").touch()
    size = sum(r["diff-size"] for r in layer_records) + sum(len(data) for data in big.values())
    dirs = tuple(str(root / "overlay" / r["id"] / "diff") for r in reversed(layer_records))
    digests = (_digest(manifest_bytes), other) if names else (_digest(manifest_bytes),)
    return Image(names[0] if names else ID, ID, _digest(manifest_bytes), "arm64", size, tuple(diff_ids),
                 "overlay", dirs, "podman", os="linux", variant=variant, digests=digests)


def test_big_data_names_are_containers_storages() -> None:
    assert store_lookup.big_data_name("manifest") == "manifest"
    assert store_lookup.big_data_name("sha256:ab") == "=" + base64.b64encode(b"sha256:ab").decode()


@pytest.mark.parametrize(("reference", "key"), [
    ("localhost/vm:1", ("name", "localhost/vm:1")),
    ("quay.io/containerdisks/fedora", ("name", "quay.io/containerdisks/fedora:latest")),
    ("registry:5000/a/b", ("name", "registry:5000/a/b:latest")),
    ("sha256:" + ID, ("id", ID)),
    (ID, ("id", ID)),
    ("fedora:40", None),  # a short name: podman resolves it (localhost/, search registries, aliases)
    ("docker.io/fedora", None),  # podman writes docker.io/library/fedora
    ("quay.io/x/y@sha256:" + ID, None),
    (ID[:12], None),  # a prefix: podman matches names first
])
def test_only_references_that_need_no_resolution_are_looked_up(reference: str, key: tuple[str, str] | None) -> None:
    assert store_lookup._key(reference) == key


@pytest.mark.parametrize("layers", [1, 3])
def test_the_image_is_what_podman_inspect_says(tmp_path: Path, layers: int) -> None:
    expected = _store(tmp_path, layers)
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path)) == expected
    assert store_lookup.lookup(ID, str(tmp_path)) == expected.__class__(**{**expected.__dict__, "reference": ID})


def test_an_image_without_names_has_only_its_own_digest(tmp_path: Path) -> None:
    expected = _store(tmp_path, names=())
    assert store_lookup.lookup(ID, str(tmp_path)) == expected


def test_the_configs_variant_is_kept(tmp_path: Path) -> None:
    found = store_lookup.lookup("localhost/vm:1", str(tmp_path)) if _store(tmp_path, variant="v8") else None
    assert found is not None and found.variant == "v8"


def test_what_the_files_cannot_answer_is_podmans(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    assert store_lookup.lookup("localhost/other:1", str(tmp_path / "a")) is None
    assert store_lookup.lookup("vm:1", str(tmp_path / "a")) is None
    # a manifest list: podman picks the instance for this host
    _store(tmp_path / "b", manifest={"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                     "manifests": []})
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path / "b")) is None
    # a config the manifest names that the store does not hold
    _store(tmp_path / "c")
    config = next(p for p in (tmp_path / "c" / "overlay-images" / ID).iterdir() if p.name.startswith("=c2hh"))
    config.unlink()
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path / "c")) is None
    # a layer without its size, a layer missing, a file that does not parse
    for broken, change in (("d", lambda r: r[-1].pop("diff-size")), ("e", lambda r: r.pop(0))):
        _store(tmp_path / broken, layers=2)
        records = json.loads((tmp_path / broken / "overlay-layers" / "layers.json").read_text())
        change(records)
        (tmp_path / broken / "overlay-layers" / "layers.json").write_text(json.dumps(records))
        assert store_lookup.lookup("localhost/vm:1", str(tmp_path / broken)) is None
    _store(tmp_path / "f")
    (tmp_path / "f" / "overlay-images" / "images.json").write_text("[{")
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path / "f")) is None
    (tmp_path / "g").mkdir()
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path / "g")) is None


@pytest.mark.parametrize("lock", ["overlay-layers/layers.lock", "overlay-images/images.lock"])
def test_a_store_a_writer_holds_is_left_to_podman(tmp_path: Path, lock: str) -> None:
    expected = _store(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(tmp_path / lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "held\n"
        assert store_lookup.lookup("localhost/vm:1", str(tmp_path)) is None
    finally:
        writer.communicate("")
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path)) == expected


def test_a_reader_holds_both_locks_shared_while_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store(tmp_path)
    seen: list[str] = []
    real = store_lookup._json_file

    def reading(path: str) -> Any:
        for lock in ("overlay-layers/layers.lock", "overlay-images/images.lock"):
            # Asked from another process (closing a descriptor of the file here would drop this process's locks):
            # a writer is refused, a reader is not.
            probe = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / lock)], capture_output=True,
                                   text=True, check=True)
            seen.append(probe.stdout.strip())
        return real(path)

    monkeypatch.setattr(store_lookup, "_json_file", reading)
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path)) is not None
    assert seen == ["shared"] * 4


@pytest.mark.parametrize("variable", ["CONTAINER_HOST", "CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER",
                                      "_CONTAINERS_ROOTLESS_UID"])
def test_another_store_or_host_is_podmans_to_find(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "x")
    assert store_lookup.graph_root() is None


def test_rootless_default_store_is_under_the_users_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(store_lookup, "_SYSTEM_CONFS", ())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / "data" / "containers" / "storage" / "overlay").mkdir(parents=True)
    assert store_lookup.graph_root() == str(tmp_path / "data" / "containers" / "storage")


def test_a_storage_conf_of_another_driver_or_extra_stores_is_podmans(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "storage.conf"
    monkeypatch.setattr(store_lookup, "_SYSTEM_CONFS", (str(conf),))
    (tmp_path / "root" / "overlay").mkdir(parents=True)
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp_path / "root"}"\n')
    assert store_lookup.graph_root() == str(tmp_path / "root")
    for extra in ('driver = "vfs"', '[storage.options]\nadditionalimagestores = ["/x"]', "transient_store = true",
                  "not toml ["):
        conf.write_text(f'[storage]\ngraphroot = "{tmp_path / "root"}"\n{extra}\n')
        assert store_lookup.graph_root() is None, extra


def test_an_id_that_is_no_hex_digest_names_no_path(tmp_path: Path) -> None:
    # Layer and image IDs become paths (`overlay/<id>/diff`, `overlay-images/<id>/…`): only what podman writes.
    _store(tmp_path / "a", layers=2)
    records = json.loads((tmp_path / "a" / "overlay-layers" / "layers.json").read_text())
    records[0]["id"] = records[1]["parent"] = "../../../../etc"
    (tmp_path / "a" / "overlay-layers" / "layers.json").write_text(json.dumps(records))
    assert store_lookup.lookup("localhost/vm:1", str(tmp_path / "a")) is None
