"""Fixtures of the registry client's tests: every file it would read (registries.conf, drop-ins, auth files,
docker's config) moved into the test's own temp dirs, so that the machine's configuration never leaks in."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdisk.core.engines import docker
from cdisk.core.engines.registry import config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own; no registries.conf, auth file or docker config anywhere unless a test writes one
    (the system's registries.conf and drop-in dir are moved to paths that do not exist)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME",
                 "DOCKER_CONFIG", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(config, "SYSTEM_REGISTRIES_CONF", tmp_path / "etc/registries.conf")
    monkeypatch.setattr(config, "SYSTEM_REGISTRIES_DIR", tmp_path / "etc/registries.conf.d")
    monkeypatch.setattr(config, "SYSTEM_CERT_DIRS", ())
    docker.registry_config.cache_clear()
    return home


@pytest.fixture
def registries_conf(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registries.conf podman reads ($CONTAINERS_REGISTRIES_CONF), empty until a test writes it."""
    path = tmp_path / "registries.conf"
    path.write_text("")
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(path))
    return path
