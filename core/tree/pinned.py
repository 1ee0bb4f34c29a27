"""What the trees of files on this host (a mount, layer directories) share: a disk opened from them, pinned by its
descriptor and the very file that was resolved — or refused, since the image changed while cdisk looked at it;
and a directory's names read within a bound.
"""

from __future__ import annotations

import os
import stat

from cdisk.core.errors import TooManyEntries, UnsafeImageError


def changed(path: str) -> UnsafeImageError:
    """The refusal of a disk at image path `path` that is no longer what was resolved."""
    return UnsafeImageError(f"/{path} changed while cdisk looked at it; run cdisk again")


def same_file(fd: int, expected: os.stat_result | None, path: str) -> int:
    """`fd`, when it is the regular file `expected` (as resolved); else it is closed and refused.

    Raises:
        UnsafeImageError: another file (or none was resolved at `path`).
    """
    st = os.fstat(fd)
    if expected is None or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino) \
            or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise changed(path)
    return fd


def names_in(fd: int, limit: int | None, path: str) -> list[str]:
    """The names in the directory `fd` (image path `path`), read lazily: more than `limit` of them raise
    `TooManyEntries` before the rest is read, so that a directory of millions costs no more than the bound."""
    if limit is not None and limit < 0:
        raise TooManyEntries(path)
    names: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if limit is not None and len(names) >= limit:
                raise TooManyEntries(path)
            names.append(entry.name)
    return names
