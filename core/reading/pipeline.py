"""The one way every command reaches an image's disk: resolve the image, choose the reading method and the
temp dir once, open the image, find the disk, judge it, and hand it over — then undo all of it, however the
command's block ends.

A command is: plan its target cheaply (so that a wrong TARGET costs no pull), enter `opened_disk` (or
`read_image`, for `ls`, which looks at every candidate), do its one action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

from cdisk.core.disk.candidates import every_disk, find_disk
from cdisk.core.disk.inspection import inspect_disk
from cdisk.core.disk.wanted import Wanted
from cdisk.core.engines import choice, store_pin
from cdisk.core.engines.seam import Engine, Image
from cdisk.core.errors import CdiskError
from cdisk.core.progress import Progress
from cdisk.core.qemu import qemu_img
from cdisk.core.reading.methods import ImageView, choose_reading, falling_back, image_view
from cdisk.core.request import ImageRequest, Reading, ReadRequest
from cdisk.core.sources import DiskSource
from cdisk.core.target import Target, temp_parent

T = TypeVar("T")


@dataclass(frozen=True)
class OpenedImage:
    """A resolved image, opened by `reading`."""

    image: Image
    reading: Reading
    view: ImageView


@dataclass(frozen=True)
class OpenedDisk:
    """The disk of an opened image, judged: its format told by its bytes and confirmed by qemu-img, and the
    `json:` spec qemu-img reads it by.
    """

    image: Image
    reading: Reading
    source: DiskSource
    format: str
    virtual_size: int
    spec: str
    allocation: tuple[int, int] | None = None
    compressed: bool = False  # some cluster is compressed (a qcow2's)
    # Waits until the image's layers from outside are checked against their digests (`ImageView.vouch`): a
    # command calls it before it publishes anything of the disk.
    vouch: Callable[[], None] = lambda: None


def resolve(image: ImageRequest | Image, progress: Progress, engine: Engine | None = None) -> tuple[Engine, Image]:
    """The image in its engine's store (found, or pulled as asked), and that engine; an `Image` is already
    resolved. `engine` replaces the one the request or the image names (a test's own engine).

    The sandbox probe starts first, so that it runs while the engine looks the image up — once the request is
    known to be one an engine can take (a usage error ends the run before any probe is left to reap).
    """
    if isinstance(image, ImageRequest):
        choice.check(image)
    qemu_img.start_sandbox_probe()
    if engine is not None:
        return engine, image if isinstance(image, Image) else engine.find_image(image, progress)
    return (choice.of(image), image) if isinstance(image, Image) else choice.find(image, progress)


def read_image(image: ImageRequest | Image, read: ReadRequest, progress: Progress, work: Callable[[OpenedImage], T],
               engine: Engine | None = None) -> T:
    """`work` done on the image opened by the method `read.method` gives a reader, in place where it can be, as
    `opened_disk` opens it (and by another method when `auto`'s layer directories prove unusable only once read,
    so `work` may run twice); of a compressed layer, only the heads of the candidate disks are copied out
    (enough to judge them by header), or of the file `read.disk_path` names (`ls`).
    """
    engine, found = resolve(image, progress, engine)

    def attempt(chosen: Reading) -> T:
        with _view(engine, found, chosen, read, None, progress, Wanted.heads(read.disk_path), "the image") as view, \
                vouched_first(view.vouch), _held_still(found, chosen, progress):
            return work(OpenedImage(found, chosen, view))

    chosen = choose_reading(read.method, writes=False, image=found, engine=engine)
    return falling_back(read.method, chosen, attempt, False, engine, progress)


@contextmanager
def vouched_first(vouch: Callable[[], None]) -> Iterator[None]:
    """A refusal raised in the block, which bytes from outside (a file source's) may have caused and may quote, is
    told only once those bytes are vouched for: a blob that fails its digest is the answer instead."""
    try:
        yield
    except CdiskError:
        vouch()
        raise


def _view(engine: Engine, image: Image, reading: Reading, read: ReadRequest, target: Target | None,
          progress: Progress, wanted: Wanted, what: str = "the disk") -> AbstractContextManager[ImageView]:
    where = f"{engine.name}'s store" if engine.stores else image.reference
    progress.stage(f"reading {what} in place from {where} ({reading.value} method)")
    unconfined = qemu_img.unconfined_reason()
    if unconfined:
        progress.warn(f"qemu-img runs without a sandbox: {unconfined}; only raw and qcow2 disks are read")
    return image_view(engine, image, reading, temp_parent(read.tmpdir, target), wanted, progress)


def _open(engine: Engine, image: Image, reading: Reading, read: ReadRequest, target: Target | None,
          progress: Progress, every: bool) -> tuple[ExitStack, list[OpenedDisk]]:
    """The disk (`every`: each candidate under /disk/) opened and judged, with the stack that holds it open
    (undone here if anything fails)."""
    with ExitStack() as stack:
        view = stack.enter_context(_view(engine, image, reading, read, target, progress,
                                         Wanted.disk(read.disk_path, every)))
        stack.enter_context(vouched_first(view.vouch))
        with _held_still(image, reading, progress):
            found = every_disk(view.tree, view.sniff) if every else [find_disk(view.tree, read.disk_path, view.sniff)]
            sources = [(path, _naming_disk(path, every, view.open, path, member)) for path, member in found]
        opened = []
        for path, source in sources:
            judged = _naming_disk(path, every, inspect_disk, source)
            opened.append(OpenedDisk(image, reading, source, judged.format, judged.virtual_size, judged.spec,
                                     judged.allocation, judged.compressed, view.vouch))
        return stack.pop_all(), opened


def _naming_disk(path: str, every: bool, step: Callable[..., T], *args: object) -> T:
    """`step(*args)` for the disk at `path`; a refusal names the disk when there are several (`every`)."""
    try:
        return step(*args)
    except CdiskError as refused:
        if every:
            refused.message = f"{path}: {refused.message}"
            refused.args = (refused.message,)
        raise


def _held_still(image: Image, reading: Reading, progress: Progress) -> AbstractContextManager[None]:
    """While a method that reads the store's files in place finds and opens the disk, the image's layers cannot be
    removed under it, or the run ends with one line saying they were (`engines.store_pin`). Once open, the disk's
    descriptor keeps its bytes: the conversion itself holds no lock."""
    if reading in (Reading.LAYERS, Reading.MOUNT):
        return store_pin.pinned(image, progress.warn)
    return nullcontext()


@contextmanager
def opened_disk(image: ImageRequest | Image, read: ReadRequest, target: Target | None, progress: Progress,
                reading: Reading | None = None, engine: Engine | None = None) -> Iterator[OpenedDisk]:
    """The image's disk (the one under /disk/, or `read.disk_path`), open and judged.

    Raises:
        CdiskError: the image cannot be had, holds no single disk, or its disk is refused.
    """
    with _opened(image, read, target, progress, reading, engine, every=False) as (disk,):
        yield disk


@contextmanager
def opened_disks(image: ImageRequest | Image, read: ReadRequest, progress: Progress, every: bool,
                 ) -> Iterator[list[OpenedDisk]]:
    """The disk `opened_disk` finds, or with `every` each disk directly under /disk/, open and judged (`serve`).

    Raises:
        CdiskError: the image cannot be had, holds no disk (or too many), or one of them is refused.
    """
    with _opened(image, read, None, progress, None, None, every) as disks:
        yield disks


@contextmanager
def _opened(image: ImageRequest | Image, read: ReadRequest, target: Target | None, progress: Progress,
            reading: Reading | None, engine: Engine | None, every: bool) -> Iterator[list[OpenedDisk]]:
    engine, found = resolve(image, progress, engine)

    def attempt(chosen: Reading) -> tuple[ExitStack, list[OpenedDisk]]:
        return _open(engine, found, chosen, read, target, progress, every)

    if reading is not None:
        held, disks = attempt(reading)
    else:
        chosen = choose_reading(read.method, writes=False, image=found, engine=engine)
        held, disks = falling_back(read.method, chosen, attempt, False, engine, progress)
    with held:  # it holds `vouched_first` too: a refusal in the block waits for the check
        yield disks
