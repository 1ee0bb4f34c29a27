"""A podman store of one's own: standard library only (the scripts import it without pytest)."""

from __future__ import annotations

from pathlib import Path


def storage_conf(conf: Path, store: Path) -> Path:
    """`conf`, written as a storage.conf (CONTAINERS_STORAGE_CONF) whose graph and run roots are in `store`."""
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n')
    return conf
