"""An image's layer directories held still while cdisk reads them in place, against an `rmi` or `prune` that
another job runs at the same moment.

- containers/storage (podman) guards its layers with a lock file, `<graphroot>/overlay-layers/layers.lock`: a
  whole-file POSIX record lock (`fcntl(F_SETLKW)`, `pkg/lockfile` up to v1.5x, `internal/rawfilelock` since),
  shared by readers, exclusive for anything that deletes or adds a layer (`store.DeleteImage` takes it first, before
  the image store's). cdisk holds it shared, as podman's own readers do, for as long as it walks the directories and
  opens the disk — and never while it runs podman, which may need it exclusive (podman waits for a writer's lock as
  long as it takes; so would a reader of cdisk's that ran podman under it, forever).
- moby (docker) keeps its locks inside dockerd. What holds instead: dockerd deletes an image's record
  (`image/overlay2/imagedb/content/sha256/<id>`) before it releases the image's layers, and a layer's directory is
  removed where it stands (overlay2's `Remove`). So a record still there after the disk was opened, and every layer
  directory still the very one (device, inode) seen before the walk began, prove the walk ran on directories no
  removal had touched; an image loaded again meanwhile has new directories (new cache IDs, or for podman the same
  paths made anew: a new ctime), which the same check sees.

Both checks run for both engines (the lock where the store has one): a store without a lock file, or a lock this
process may not take, still gets the check. The disk's descriptor, opened inside the block, keeps its bytes
whatever is removed after it ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

from cdisk.core.engines.seam import Image
from cdisk.core.errors import CdiskError, ImageError, ImageRemoved

# How long a lock a podman command holds exclusive (a pull writing a large layer, podman 4.3) is waited for.
LOCK_WAIT_SECONDS = 300.0
_POLL_SECONDS = (0.002, 0.01, 0.05)



def removed(image: Image) -> ImageRemoved:
    """The refusal of an image whose layers were removed or replaced while cdisk read them."""
    return ImageRemoved(image.engine, image.reference)


def _identities(image: Image) -> list[tuple[int, int, int]]:
    """What tells each layer directory from another made at its path: device, inode and ctime. A directory removed
    and made again often gets the very inode back (ext4 hands a freed one out again), and podman's layer IDs, so
    the paths, are the same when an image is loaded again; the ctime is the new directory's. A layer's directory
    is never changed after it is made."""
    try:
        return [(st.st_dev, st.st_ino, st.st_ctime_ns) for st in map(os.stat, image.layer_dirs)]
    except FileNotFoundError:
        raise removed(image) from None


def refuse_if_removed(image: Image) -> None:
    """Refuse an image whose layer directories are gone since its engine named them (removed meanwhile); one this
    process may not look into is left to the caller to judge.

    Raises:
        ImageRemoved: a layer directory is gone.
    """
    with suppress(PermissionError):
        _identities(image)


def _graph_roots(image: Image) -> list[str]:
    """The roots of the containers/storage stores the image's layers lie in (`<root>/overlay/<id>/diff`); an
    additional image store is a root of its own."""
    return sorted({os.path.dirname(os.path.dirname(os.path.dirname(d))) for d in image.layer_dirs})


def lock_shared(path: str, waiting: Callable[[str], None], wait: float) -> int | None:
    """A descriptor of `path` holding its whole-file POSIX lock shared; None where there is no such file or this
    process may not open it (the check after the walk still runs).

    Raises:
        ImageError: a writer held it for more than `wait` seconds.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS):
            return None
        raise
    started = time.monotonic()
    deadline = started + wait
    told = False
    attempt = 0
    try:
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fd
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            now = time.monotonic()
            if now >= deadline:
                raise ImageError(f"podman's layer store stayed locked by another program for {wait:.0f} s "
                                 f"({path}); run cdisk again when it is done")
            if not told and now - started > 1.0:
                waiting(f"waiting for the lock of podman's layer store ({path}): another program (podman, buildah, "
                        "skopeo) is writing to the store")
                told = True
            # Polled, not F_SETLKW: a wait that a signal can end and a deadline can bound.
            time.sleep(_POLL_SECONDS[min(attempt, len(_POLL_SECONDS) - 1)])
            attempt += 1
    except BaseException:
        os.close(fd)
        raise


def _image_record(image: Image) -> str | None:
    """Where docker keeps the image's record, which it deletes before it releases the image's layers."""
    if image.engine != "docker" or not image.layer_dirs:
        return None
    data_root = os.path.dirname(os.path.dirname(os.path.dirname(image.layer_dirs[0])))
    return os.path.join(data_root, "image", "overlay2", "imagedb", "content", "sha256", image.id)


@contextmanager
def pinned(image: Image, waiting: Callable[[str], None] = lambda line: None,
           wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """A block in which the image's layer directories are read: podman cannot remove them meanwhile, and when it
    ends they are known to be the ones that were there when it began, the image still in its store.

    `waiting` is told, once, that the lock is held by a writer for more than a second (a warning: a cron job's
    log shows why it waits).

    Raises:
        ImageError: the image was removed or replaced before or while the block ran (never a view of a store
        half removed), or its store stayed locked.
    """
    if not image.layer_dirs:
        yield
        return
    with ExitStack() as held:
        if image.engine == "podman":
            for root in _graph_roots(image):
                fd = lock_shared(os.path.join(root, "overlay-layers", "layers.lock"), waiting, wait)
                if fd is not None:
                    held.callback(os.close, fd)  # closing it drops the lock
        before = _identities(image)
        try:
            yield
        except CdiskError:
            # A file gone from under the walk shows as a disk not found, a path unreadable, a file changed: the
            # answer is what happened to the image, when that is what happened.
            if _changed_since(image, before):
                raise removed(image) from None
            raise
        if _changed_since(image, before):
            raise removed(image)


def _changed_since(image: Image, before: list[tuple[int, int, int]]) -> bool:
    record = _image_record(image)
    try:
        return _identities(image) != before or (record is not None and not os.path.exists(record))
    except ImageError:
        return True
