"""A podman store of one's own: standard library only (the scripts import it without pytest)."""

from __future__ import annotations

from pathlib import Path


def storage_conf(conf: Path, store: Path, driver: str = "overlay") -> Path:
    """`conf`, written as a storage.conf (CONTAINERS_STORAGE_CONF) whose graph and run roots are in `store`. A
    rootless podman takes its graph root from rootless_storage_path (podman 5: and its database with it, which
    would otherwise keep the user's default store and driver)."""
    conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n'
                    f'rootless_storage_path = "{store}/graph"\n')
    return conf
