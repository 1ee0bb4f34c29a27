"""podman runs with TMPDIR in cdisk's own temp dir, except where podman's runtime dir would follow TMPDIR (another
runtime dir would mean other storage locks than every other podman of the user takes)."""

from __future__ import annotations

import pytest
from plumbum import local

from cdisk.core.engines.podman import engine_tmpdir, runtime_dir_follows_tmpdir

NO_SESSION = 3999999  # a uid with no /run/user/UID: a cron job of a user without a login session


@pytest.mark.parametrize(("environ", "euid", "follows"), [
    ({}, 0, False),  # root: /run
    ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, False),
    ({"XDG_RUNTIME_DIR": "/run/user/3999999"}, NO_SESSION, False),
    ({}, NO_SESSION, True),  # $TMPDIR/podman-run-UID
    ({"_CONTAINERS_ROOTLESS_UID": str(NO_SESSION)}, 0, True),  # inside `podman unshare`
])
def test_where_the_runtime_dir_follows_tmpdir(environ: dict[str, str], euid: int, follows: bool) -> None:
    assert runtime_dir_follows_tmpdir(environ, euid) is follows


def test_engine_tmpdir_sets_tmpdir_where_it_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    before = local.env.get("TMPDIR")
    monkeypatch.setattr("cdisk.core.engines.podman.runtime_dir_follows_tmpdir", lambda: False)
    with engine_tmpdir("/cdisk-own"):
        assert local.env["TMPDIR"] == "/cdisk-own"
    assert local.env.get("TMPDIR") == before
    monkeypatch.setattr("cdisk.core.engines.podman.runtime_dir_follows_tmpdir", lambda: True)
    with engine_tmpdir("/cdisk-own"):
        assert local.env.get("TMPDIR") == before
