"""The three ways to reach an image's files through an engine, and the choice between them.

`layers`: cdisk stacks the overlay store's layer directories itself (`tree.layer_dirs`); files are read where
they lie, with no mount and no copy. `mount`: the engine mounts the image; its files are read where they lie
in the store. `save`: the engine saves the layers to a private temp dir (image files hand out theirs where they
lie); a file is a member of a layer tar, read at its offset. Each way gives an `ImageView`: the image's tree
(for finding the disk) and a way to turn a file found in it into a `DiskSource`. `falling_back` is the one
place where `auto` turns from the layers to another method.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from cdisk.core.disk.wanted import Wanted
from cdisk.core.engines.seam import Engine, Image
from cdisk.core.errors import LayerDirsUnusable, TargetError, UsageError
from cdisk.core.progress import Progress
from cdisk.core.request import Method, Reading
from cdisk.core.sources import DiskSource
from cdisk.core.target import free_bytes
from cdisk.core.tree.merged import ImageTree, LayerMember

if TYPE_CHECKING:  # the save method's modules only for a run that saves: start-up stays cheap
    from cdisk.core.disk.anywhere import Sniffed
    from cdisk.core.layers.saved import SavedLayers
    from cdisk.core.oci.blob import LayerBlob

T = TypeVar("T")

# Each reading method's tree is imported by the function that reads by it: a run pays only for the tree of the
# method it uses.


def choose_reading(method: Method, writes: bool, euid: int | None = None, image: Image | None = None,
                   engine: Engine | None = None) -> Reading:
    """How to read the disk in a process of effective uid `euid` (default: this one).

    `auto` reads an `image` whose overlay layer directories this process may read straight from them (no
    mount, no namespace); without an image (or when that reading fails: the caller asks again without one)
    it mounts. Mounting needs root (of the host, or of rootless podman's user namespace inside `podman
    unshare`). A rootless user who asks to mount gets the mount in the user namespace when the command
    `writes` (the conversion runs in a child there), and the save method otherwise: reading needs no namespace.
    An `engine` that cannot mount (docker, image files) saves instead, and refuses an explicit mount; no
    `engine`: one that mounts and keeps a store (podman).
    """
    if method is Method.SAVE:
        return Reading.SAVE
    if method is Method.LAYERS or (method is Method.AUTO and image is not None and _layers_readable(engine, image)):
        return Reading.LAYERS
    if engine is not None and not engine.mounts:
        if method is Method.MOUNT:
            raise UsageError(engine.cannot_mount)
        return Reading.SAVE
    if (os.geteuid() if euid is None else euid) == 0:
        return Reading.MOUNT
    return Reading.MOUNT_IN_USERNS if writes else Reading.SAVE


def _layers_readable(engine: Engine | None, image: Image) -> bool:
    from cdisk.core.engines.store_pin import refuse_if_removed
    from cdisk.core.tree.layer_dirs import unusable

    refuse_if_removed(image)  # gone since the engine named them: the image was removed, not unreadable
    return unusable(image, stored=engine is None or engine.stores) is None


def falling_back(method: Method, reading: Reading, attempt: Callable[[Reading], T], writes: bool, engine: Engine,
                 progress: Progress) -> T:
    """`attempt(reading)`; when `auto` chose the layer directories and they prove unusable only once read (a
    metacopy, a redirect, an AUFS whiteout), `attempt` once more by the method `auto` chooses without them.
    """
    try:
        return attempt(reading)
    except LayerDirsUnusable as why:
        if reading is not Reading.LAYERS or method is not Method.AUTO:
            raise
        again = choose_reading(method, writes, engine=engine)
        progress.stage(f"{why.why}: reading by the {again.method} method instead")
        return attempt(again)


@dataclass(frozen=True)
class ImageView:
    """An image's files as one reading method reaches them.

    `tree` finds files (with the image's own rules for links); `open` turns a regular file found there into
    the `DiskSource` qemu-img reads; `blobs` are the saved layer files (save method only, for `ls`); `partial`
    says whether only the head of a file found can be read (a compressed layer's, for `ls`); `copied` whether
    its bytes can be had without reading its layer once more; `vouch` waits until the layers from outside (a
    file source's) are checked against their digests, and must be called before anything of them is published.
    """

    tree: ImageTree
    open: Callable[[str, LayerMember], DiskSource]
    blobs: tuple[LayerBlob, ...] = ()
    partial: Callable[[LayerMember], bool] = lambda found: False
    copied: Callable[[LayerMember], bool] = lambda found: True
    vouch: Callable[[], None] = lambda: None
    # A file's bytes for a block only (a file in place is closed when it ends, so that `ls` holds no descriptor
    # per candidate); None: `open`, which costs nothing to hold.
    lend: Callable[[str, LayerMember], AbstractContextManager[DiskSource]] | None = None
    # What a file's header says it is (`disk.anywhere`), where the view knows it without reading it (a compressed
    # layer's pass judged it); None: read through `borrowed`.
    sniffed: Callable[[str, LayerMember], Sniffed | None] | None = None
    # Where a file's data lie: two names with the same identity are one disk, judged once.
    identity: Callable[[LayerMember], Hashable] = lambda found: (found.layer, found.offset, found.size)

    def borrowed(self, image_path: str, found: LayerMember) -> AbstractContextManager[DiskSource]:
        """The bytes of the regular file `found`, for the block only."""
        return self.lend(image_path, found) if self.lend is not None else nullcontext(self.open(image_path, found))

    def sniff(self, image_path: str, found: LayerMember) -> Sniffed | None:
        """What the header of the regular file `found` says it is, when a disk (`disk.anywhere.sniff`)."""
        if self.sniffed is not None:
            return self.sniffed(image_path, found)
        from cdisk.core.disk.anywhere import sniff

        with self.borrowed(image_path, found) as source:
            return sniff(source.read_at, source.size)


@contextmanager
def saved_view(engine: Engine, image: Image, tmp_parent: str, wanted: Wanted, progress: Progress,
               ) -> Iterator[ImageView]:
    """The image's layers saved to a private temp dir, removed when the block ends, however it ends (an engine
    that does not copy — image files — hands out its layers where they lie, with no temp dir at all).

    Compressed layers are decompressed once, the `wanted` files copied out into anonymous files in `tmp_parent`.
    """
    from cdisk.core.layers.saved import SavedLayers
    from cdisk.core.oci.blob import close_blobs

    with ExitStack() as stack:
        workdir = stack.enter_context(_save_dir(image, tmp_parent)) if engine.copies else None
        blobs = tuple(engine.save(image, workdir))
        stack.callback(close_blobs, blobs)
        layers = SavedLayers(blobs, wanted, tmp_parent, progress)
        stack.callback(layers.close)
        yield ImageView(layers.tree, layers.source, blobs, layers.partial, layers.copied, layers.vouch,
                        sniffed=_saved_sniff(layers, progress))


def _saved_sniff(layers: SavedLayers, progress: Progress) -> Callable[[str, LayerMember], Sniffed | None]:
    """What a saved file's header says it is (`disk.anywhere.sniff`): read at its offset in a plain layer; of a
    compressed layer, judged in one more pass over it, which judges all its files at once (only when /disk/
    holds no disk, for the files of that layer the search reaches).
    """
    from cdisk.core.disk.anywhere import sniff

    passes: dict[int, dict[int, Sniffed | None]] = {}

    def sniffed(image_path: str, found: LayerMember) -> Sniffed | None:
        kind = layers.kinds[found.layer]
        if kind is None:
            return sniff(layers.source(image_path, found).read_at, found.size)
        if found.layer not in passes:
            passes[found.layer] = _sniffing_pass(layers.blobs[found.layer], kind, progress)
        return passes[found.layer].get(found.offset)

    return sniffed


def _sniffing_pass(blob: LayerBlob, kind: str, progress: Progress) -> dict[int, Sniffed | None]:
    """What the header of each file of the compressed layer `blob` the search looks at says, by data offset.

    A second pass over the layer: its first (`layers.compressed.read_compressed`) copies only the files it was
    asked for; judging the headers there, as they go by, would spare this one.
    """
    from cdisk.core.disk.anywhere import MIN_SIZE, SNIFF_BYTES, in_bytes, sniff
    from cdisk.core.layers.decompressor import Decompressed
    from cdisk.core.tar_headers import BLOCK, REGULAR, read_entries, starts_a_tar

    progress.stage(f"looking for disks in layer {blob.short} ({kind}, read once more)")
    stream = Decompressed(blob, kind, progress)
    found: dict[int, Sniffed | None] = {}
    if not starts_a_tar(stream.peek(BLOCK)):
        return found  # a disk artifact's layer: its one file is /disk/NAME
    for entry in read_entries(stream, None):
        if entry.type == REGULAR and not entry.sparse and entry.size >= MIN_SIZE:
            found[entry.data_offset] = sniff(in_bytes(stream.peek(min(entry.size, SNIFF_BYTES))), entry.size)
    return found


@contextmanager
def _save_dir(image: Image, tmp_parent: str) -> Iterator[Path]:
    """A private temp dir in `tmp_parent` with room for the image's layers; removed however the block ends.

    Held under its lock while the block runs; what a run killed with SIGKILL left in `tmp_parent` is removed first
    (`leftovers`).
    """
    from cdisk.core import leftovers

    leftovers.sweep(tmp_parent, leftovers.IN_TEMP_PARENT)
    try:
        fd, workdir = leftovers.locked_dir(tmp_parent, ".cdisk-save-")
    except OSError as error:
        raise TargetError(f"cannot make a temp dir in {tmp_parent}: {error.strerror}; "
                          "pass --tmpdir with a writable directory") from None
    try:
        free = free_bytes(workdir)
        if image.size > free:
            raise TargetError(f"saving the image needs about {image.size} bytes in {tmp_parent} but only {free} "
                              "are free; pass --tmpdir on a larger filesystem")
        yield Path(workdir)
    finally:
        try:
            shutil.rmtree(workdir, ignore_errors=True)
        finally:
            os.close(fd)


class _PinningTree(ImageTree, Protocol):
    def open_disk(self, member: LayerMember) -> int: ...

    def identity(self, member: LayerMember) -> tuple[int, int] | None: ...


@contextmanager
def _pinned_view(tree: _PinningTree) -> Iterator[ImageView]:
    """A view over files in place: every disk opened from `tree` is held open until the block ends (a file lent
    only until its block ends)."""
    from cdisk.core.sources.in_place import InPlaceFile

    with ExitStack() as stack:
        def pinned(image_path: str, found: LayerMember) -> DiskSource:
            fd = tree.open_disk(found)
            stack.callback(os.close, fd)
            return InPlaceFile(image_path, fd, found.size)

        @contextmanager
        def lent(image_path: str, found: LayerMember) -> Iterator[DiskSource]:
            fd = tree.open_disk(found)
            try:
                yield InPlaceFile(image_path, fd, found.size)
            finally:
                os.close(fd)

        def identity(found: LayerMember) -> Hashable:
            return tree.identity(found) or (found.layer, found.path)

        yield ImageView(tree, pinned, lend=lent, identity=identity)


@contextmanager
def mounted_view(engine: Engine, image: Image) -> Iterator[ImageView]:
    """The image mounted by the engine, its disks read in place."""
    from cdisk.core.tree.mounted import MountedTree

    with engine.mount(image) as root, _pinned_view(MountedTree(root)) as view:
        yield view


def layers_view(engine: Engine, image: Image) -> AbstractContextManager[ImageView]:
    """The image stacked by cdisk over its layer directories, its disks read in place.

    Raises:
        LayerDirsUnusable: the store is not overlay, or its directories are not readable here.
    """
    from cdisk.core.engines.store_pin import refuse_if_removed
    from cdisk.core.tree import layer_dirs

    refuse_if_removed(image)
    why = layer_dirs.unusable(image, stored=engine.stores)
    if why:
        raise LayerDirsUnusable(why)
    return _pinned_view(layer_dirs.LayerDirsTree(list(image.layer_dirs)))


def image_view(engine: Engine, image: Image, reading: Reading, tmp_parent: str, wanted: Wanted,
               progress: Progress) -> AbstractContextManager[ImageView]:
    """The view `reading` gives (the user-namespace mount runs in a child of its own). `wanted`: the files a
    compressed layer's stream copies out as it goes by.
    """
    assert reading is not Reading.MOUNT_IN_USERNS, "a child in the user namespace mounts for itself"
    if reading is Reading.LAYERS:
        return layers_view(engine, image)
    if reading is Reading.MOUNT:
        return mounted_view(engine, image)
    return saved_view(engine, image, tmp_parent, wanted, progress)
