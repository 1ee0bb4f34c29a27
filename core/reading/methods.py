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
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
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
    from cdisk.core.tree.layer_dirs import unusable

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
        yield ImageView(layers.tree, layers.source, blobs, layers.partial, layers.copied, layers.vouch)


@contextmanager
def _save_dir(image: Image, tmp_parent: str) -> Iterator[Path]:
    """A private temp dir in `tmp_parent` with room for the image's layers; removed however the block ends."""
    try:
        workdir = tempfile.mkdtemp(prefix=".cdisk-save-", dir=tmp_parent)
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
        shutil.rmtree(workdir, ignore_errors=True)


class _PinningTree(ImageTree, Protocol):
    def open_disk(self, member: LayerMember) -> int: ...


@contextmanager
def _pinned_view(tree: _PinningTree) -> Iterator[ImageView]:
    """A view over files in place: every disk opened from `tree` is held open until the block ends."""
    from cdisk.core.sources.in_place import InPlaceFile

    with ExitStack() as stack:
        def pinned(image_path: str, found: LayerMember) -> DiskSource:
            fd = tree.open_disk(found)
            stack.callback(os.close, fd)
            return InPlaceFile(image_path, fd, found.size)

        yield ImageView(tree, pinned)


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
    from cdisk.core.tree import layer_dirs

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
