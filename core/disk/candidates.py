"""Which file of the image is the disk: the containerDisk and CDI conventions, and --path. A disk elsewhere is
named by the error (`disk.anywhere`), never taken without --path."""

from __future__ import annotations

from dataclasses import dataclass

from cdisk.core.disk.anywhere import Search, SniffMember, search
from cdisk.core.disk.wanted import COPIES, DISK_DIR
from cdisk.core.errors import CdiskError, DiskNotFoundError, UnsafeImageError
from cdisk.core.shell import shell_word
from cdisk.core.tree.merged import DIR, FILE, SYMLINK, ImageTree, LayerMember, resolve

# The `found: …` of a "no disk" error names at most this many entries: /disk may hold thousands.
FOUND_SHOWN = 10


@dataclass(frozen=True)
class DiskCandidate:
    """A file directly under /disk/, with the member holding its data or the reason it is refused."""

    path: str
    member: LayerMember | None
    refusal: str = ""


def _as_disk(path: str, member: LayerMember) -> LayerMember:
    if member.kind != FILE:
        raise DiskNotFoundError(f"{path} is not a regular file in the image (it is a {member.kind}); "
                                "pass --path with the disk file's path")
    if member.sparse:
        raise UnsafeImageError(f"{path} is a sparse tar member: its bytes do not lie contiguous in the "
                               "layer, so it cannot be read in place; rebuild the image without sparse files")
    return member


def _disk_dir(tree: ImageTree) -> LayerMember | None:
    """The directory /disk leads to inside the image, or None when it leads to none."""
    try:
        member = resolve(tree, DISK_DIR)
    except CdiskError:
        return None
    return member if member.kind == DIR else None


def list_candidates(tree: ImageTree) -> list[DiskCandidate]:
    """Every possible disk directly under /disk/: dot-files and directories are not candidates.

    The older CDI convention (`disk/downloaded`) is one such file and needs no rule of its own.
    Only the directory /disk resolves to inside the image is listed, and each candidate is named
    and resolved through /disk, exactly as `--path` would name it.
    """
    root = _disk_dir(tree)
    if root is None:
        return []
    candidates: list[DiskCandidate] = []
    for name in tree.children(root.path):
        if name.startswith("."):
            continue
        path = f"/{DISK_DIR}/{name}"
        try:
            member = resolve(tree, path)
            if member.kind == DIR:
                continue
            candidates.append(DiskCandidate(path, _as_disk(path, member)))
        except CdiskError as refusal:
            candidates.append(DiskCandidate(path, None, refusal.message))
    return candidates


def _what_disk_holds(tree: ImageTree) -> str:
    """For a "no disk" error: what /disk holds inside the image, or why it holds nothing there."""
    root = _disk_dir(tree)
    if root is not None:
        names = tree.children(root.path)
        shown = ", ".join(shell_word(f"/{DISK_DIR}/{name}") for name in names[:FOUND_SHOWN])
        more = f", … {len(names) - FOUND_SHOWN} more" if len(names) > FOUND_SHOWN else ""
        return f"found: {shown or 'nothing'}{more}"
    entry = tree.lookup(DISK_DIR)
    if entry is None:
        return "found: nothing"
    if entry.kind == SYMLINK:
        return f"/{DISK_DIR} is a symlink to {shell_word(entry.linkname)}, which leads to no directory inside the image"
    return f"/{DISK_DIR} is a {entry.kind}, not a directory"


def _no_disk(tree: ImageTree, sniff: SniffMember | None) -> DiskNotFoundError:
    """No disk under /disk/: the error names what /disk holds and, when `sniff` can read headers, the disk-like
    files elsewhere in the image (`anywhere.search`), none of which is taken without --path. Every path is one
    shell word (`shell.shell_word`); a file convert would refuse (qed, luks) is marked so and never offered."""
    nothing = f"no disk file directly under /{DISK_DIR}/ ({_what_disk_holds(tree)})"
    found = search(tree, sniff) if sniff is not None else Search([])
    stopped = f" ({found.stopped})" if found.stopped else ""
    if not found.found:
        if stopped:
            nothing += f"; no disk-like file elsewhere either{stopped}"
        return DiskNotFoundError(f"{nothing}; pass --path with the disk file's path in the image")
    readable = [disk for disk in found.found if not disk.sniffed.refused]
    listed = ", ".join(disk.describe() for disk in found.found[:FOUND_SHOWN])
    more = f", … {len(found.found) - FOUND_SHOWN} more" if len(found.found) > FOUND_SHOWN else ""
    if not readable:
        return DiskNotFoundError(f"{nothing}; the image holds only disk-like files cdisk does not read: {listed}{more}"
                                 f"{stopped}; rebuild the image with a raw or qcow2 disk under /{DISK_DIR}/")
    if len(found.found) == 1:
        return DiskNotFoundError(f"{nothing}; the image holds {listed}{stopped}: pass --path "
                                 f"{shell_word(readable[0].path)}")
    which = f"--path {shell_word(readable[0].path)}" if len(readable) == 1 else \
        "--path with one of them" if len(readable) == len(found.found) else "--path with one of them cdisk reads"
    return DiskNotFoundError(f"{nothing}; several disk-like files: {listed}{more}{stopped}: pass {which}")


def find_disk(tree: ImageTree, explicit: str | None = None, sniff: SniffMember | None = None,
              ) -> tuple[str, LayerMember]:
    """The disk's path in the image and the member holding its data. With no candidate, `sniff` (which reads a
    file's header) lets the error name the disk-like files elsewhere in the image; none is taken by itself.

    Raises:
        DiskNotFoundError: no candidate, several, or `explicit` is not a regular file.
        UnsafeImageError: the only candidate (or `explicit`) is refused.
    """
    if explicit:
        path = "/" + explicit.strip("/")
        return path, _as_disk(path, resolve(tree, path))
    candidates = list_candidates(tree)
    if len(candidates) == 1:
        only = candidates[0]
        if only.member is None:
            raise UnsafeImageError(only.refusal)
        return only.path, only.member
    if not candidates:
        raise _no_disk(tree, sniff)
    listed = ", ".join(shell_word(c.path) + (" (refused)" if c.refusal else "") for c in candidates)
    raise DiskNotFoundError(f"several disk files in the image: {listed}; choose one with --path")


def every_disk(tree: ImageTree, sniff: SniffMember | None = None) -> list[tuple[str, LayerMember]]:
    """Every disk directly under /disk/ (`serve --all`), at most `COPIES`; `sniff` as for `find_disk`.

    Raises:
        DiskNotFoundError: no candidate, or more than `COPIES`.
        UnsafeImageError: a candidate is refused (one refused disk refuses them all, as convert would).
    """
    candidates = list_candidates(tree)
    if not candidates:
        raise _no_disk(tree, sniff)
    if len(candidates) > COPIES:
        raise DiskNotFoundError(f"{len(candidates)} files under /{DISK_DIR}/, more than the {COPIES} --all serves; "
                                "choose one with --path")
    for candidate in candidates:
        if candidate.member is None:
            raise UnsafeImageError(f"{candidate.path}: {candidate.refusal}")
    return [(c.path, c.member) for c in candidates if c.member is not None]
