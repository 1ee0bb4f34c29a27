"""Where the disk is looked for, and which files a compressed layer's one pass copies out before the image's
tree is known (`Wanted`): shared by the layer readers, which copy, and the candidates, which choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdisk.core.paths import go_clean
from cdisk.core.tree.merged import parent_of

DISK_DIR = "disk"
# The most copies of files of compressed layers held at once for one image: /disk/ holds one disk, two or
# three at most; more are a hostile image's way to take descriptors and space. A file beyond them that turns
# out to be the disk is read in a second pass; `ls` leaves it unjudged.
COPIES = 8
# What `ls` copies of each candidate in a compressed layer: its header and a vmdk's embedded descriptor
# (formats.detect_format reads no further).
HEAD = 1 << 20


@dataclass(frozen=True)
class Wanted:
    """Which members to copy out of a compressed layer: those whose cleaned path `path` accepts, and those whose
    data start at one of `offsets`; at most `limit` bytes of each (None: whole); at most `copies` files held at
    once for the image (those asked for by offset aside).
    """

    path: Callable[[str], bool]
    limit: int | None = None
    offsets: frozenset[int] = frozenset()
    copies: int = COPIES

    @classmethod
    def disk(cls, explicit: str | None, every: bool = False) -> Wanted:
        """The disk convert looks for: `explicit` (--path), else the one file directly under /disk/ — copied
        whole the first it is met; a second candidate is not copied (the image then holds several disks, which
        convert refuses, unless a later layer removes one: then the one left is read in a second pass). `every`
        (serve --all): each file directly under /disk/, up to COPIES.
        """
        if explicit:
            wanted = go_clean("/" + explicit).lstrip("/")
            return cls(lambda path: path == wanted, copies=1)
        return cls(_under_disk, copies=COPIES if every else 1)

    @classmethod
    def at(cls, offset: int, limit: int | None) -> Wanted:
        """The one member whose data start at `offset` (a second reading, for a file not guessed)."""
        return cls(lambda path: False, limit, frozenset({offset}))

    @classmethod
    def heads(cls, explicit: str | None = None) -> Wanted:
        """Every candidate's head, enough to judge it by its header (`ls`): those directly under /disk/, or the one
        `explicit` names (`ls --path`)."""
        if explicit:
            wanted = go_clean("/" + explicit).lstrip("/")
            return cls(lambda path: path == wanted, HEAD, copies=1)
        return cls(_under_disk, HEAD)


def _under_disk(path: str) -> bool:
    return parent_of(path) == DISK_DIR
