"""A disk opened from a tree of files on this host (a mount, layer directories): pinned by its descriptor, and
the very file that was resolved — or refused, since the image changed while cdisk looked at it.
"""

from __future__ import annotations

import os
import stat

from cdisk.core.errors import UnsafeImageError


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
