"""Which file of the image is the disk: the containerDisk and CDI conventions, and --path."""

from __future__ import annotations

from dataclasses import dataclass

from cdisk.core.errors import CdiskError, DiskNotFoundError, UnsafeImageError
from cdisk.core.layers import DIR, FILE, ImageTree, LayerMember, resolve

DISK_DIR = "disk"


@dataclass(frozen=True)
class DiskCandidate:
    """A file directly under /disk/, with the member holding its data or the reason it is refused."""

    path: str
    member: LayerMember | None
    refusal: str = ""


def _as_disk(tree: ImageTree, path: str) -> LayerMember:
    member = resolve(tree, path)
    if member.kind != FILE:
        raise DiskNotFoundError(f"{path} is not a regular file in the image (it is a {member.kind}); "
                                "pass --path with the disk file's path")
    if member.sparse:
        raise UnsafeImageError(f"{path} is a sparse tar member: its bytes do not lie contiguous in the "
                               "layer, so it cannot be read in place; rebuild the image without sparse files")
    return member


def list_candidates(tree: ImageTree) -> list[DiskCandidate]:
    """Every possible disk directly under /disk/: dot-files and directories are not candidates.

    The older CDI convention (`disk/downloaded`) is one such file and needs no rule of its own.
    """
    try:
        root = resolve(tree, DISK_DIR)
    except CdiskError:
        return []
    if root.kind != DIR:
        return []
    candidates: list[DiskCandidate] = []
    for name in tree.children(root.path):
        if name.startswith("."):
            continue
        path = f"/{root.path}/{name}"
        entry = tree.lookup(f"{root.path}/{name}")
        if entry is not None and entry.kind == DIR:
            continue
        try:
            member = resolve(tree, path)
            if member.kind == DIR:
                continue
            candidates.append(DiskCandidate(path, _as_disk(tree, path)))
        except CdiskError as refusal:
            candidates.append(DiskCandidate(path, None, refusal.message))
    return candidates


def find_disk(tree: ImageTree, explicit: str | None = None) -> tuple[str, LayerMember]:
    """The disk's path in the image and the member holding its data.

    Raises:
        DiskNotFoundError: no candidate, several, or `explicit` is not a regular file.
        UnsafeImageError: the only candidate (or `explicit`) is refused.
    """
    if explicit:
        path = "/" + explicit.strip("/")
        return path, _as_disk(tree, path)
    candidates = list_candidates(tree)
    if len(candidates) == 1:
        only = candidates[0]
        if only.member is None:
            raise UnsafeImageError(only.refusal)
        return only.path, only.member
    if not candidates:
        seen = ", ".join(f"/{DISK_DIR}/{n}" for n in tree.children(DISK_DIR)) or "nothing"
        raise DiskNotFoundError(f"no disk file directly under /{DISK_DIR}/ (found: {seen}); "
                                "pass --path with the disk file's path in the image")
    listed = ", ".join(c.path + (" (refused)" if c.refusal else "") for c in candidates)
    raise DiskNotFoundError(f"several disk files in the image: {listed}; choose one with --path")
