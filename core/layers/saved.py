"""An image's layers as blobs (a blob file of an OCI layout, a member of an archive: what an engine saved, or
an image file's own, held open where it lies), read as the engine unpacks them, in place: a layer is a byte
range of a file, never extracted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from cdisk.core.disk.wanted import Wanted
from cdisk.core.errors import CdiskError, LayerRefused, UnsafeImageError
from cdisk.core.layers.digests import BlobChecks
from cdisk.core.layers.unpack import disk_layer, members_from_tar
from cdisk.core.oci.blob import LayerBlob, compression_of, read_head, unreadable
from cdisk.core.progress import Progress
from cdisk.core.sources import DiskSource
from cdisk.core.sources.copied import CopiedFile
from cdisk.core.sources.tar_member import TarMember
from cdisk.core.tar_headers import read_entries, starts_a_tar
from cdisk.core.tree.merged import FILE, LayerMember, MergedTree

if TYPE_CHECKING:  # the compressed reader (and its zstd binding) is imported only by a run that meets one
    from cdisk.core.layers.compressed import DecompressedLayer


class _Window:
    """`size` bytes at `offset` of an open file, seen as a file of their own (for the tar reader)."""

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self.file, self.offset, self.size = file, offset, size

    def seek(self, position: int) -> None:
        self.file.seek(self.offset + position)

    def read(self, length: int) -> bytes:
        return self.file.read(max(0, min(length, self.size - (self.file.tell() - self.offset))))


def read_layer(blob: LayerBlob, layer: int) -> list[LayerMember]:
    """The contents of one plain-tar layer as the engine unpacks it, with its files' data offsets (from the
    start of the layer). A 0-byte layer is an empty layer, as podman takes it.
    """
    try:
        with (os.fdopen(os.dup(blob.fd), "rb") if blob.fd is not None else blob.path.open("rb")) as f:
            window = _Window(f, blob.offset, blob.size)
            return members_from_tar(read_entries(window, blob.size), layer)  # type: ignore[arg-type]
    except LayerRefused as error:
        raise UnsafeImageError(f"layer {blob.short} is refused: {error.what} at byte {error.offset}; "
                               f"{LayerRefused.ADVICE}") from None
    except OSError as error:
        raise unreadable(blob, error) from None


class SavedLayers:
    """An image's saved layers, opened: their merged tree, and a `DiskSource` for a file found in it.

    A plain-tar layer is read in place (a file is a byte range of the blob), and so is a disk artifact's
    uncompressed layer (the disk is the blob). A compressed one is decompressed once, as it is indexed, and
    the files `wanted` are copied out of it into anonymous files in `directory` (`layers.compressed`); they
    live until `close`.
    """

    def __init__(self, blobs: Sequence[LayerBlob], wanted: Wanted, directory: str, progress: Progress) -> None:
        self.blobs, self.wanted, self.directory, self.progress = tuple(blobs), wanted, directory, progress
        self.decompressed: dict[int, DecompressedLayer] = {}
        heads = [read_head(blob) for blob in self.blobs]
        self.kinds = [compression_of(head) for head in heads]
        # The plain blobs from outside are hashed beside the work from now on (a compressed one in its pass).
        self.checks: BlobChecks | None = None
        try:
            plain = [blob for blob, kind in zip(self.blobs, self.kinds, strict=True) if blob.outside and kind is None]
            if plain:
                self.checks = BlobChecks(plain)
            self.tree = MergedTree([self._members(index, heads[index]) for index in range(len(self.blobs))])
            self._keep_referenced()
        except CdiskError:
            try:
                self._vouch_after_refusal()
            finally:
                self.close()
            raise
        except BaseException:
            self.close()
            raise

    def _members(self, index: int, head: bytes) -> list[LayerMember]:
        blob = self.blobs[index]
        if self.kinds[index] is not None:
            self.decompressed[index] = self._decompress(index, self.wanted)
            return self.decompressed[index].members
        if blob.disk_name is not None and not starts_a_tar(head):
            return disk_layer(blob.disk_name, index, blob.size)
        return read_layer(blob, index)

    def _decompress(self, index: int, wanted: Wanted) -> DecompressedLayer:
        from cdisk.core.layers.compressed import read_compressed

        blob, kind = self.blobs[index], self.kinds[index]
        assert kind is not None
        self.progress.stage(f"decompressing layer {blob.short} ({kind}, {blob.size / (1 << 20):.0f} MiB)")
        held = sum(len(layer.copies) for layer in self.decompressed.values())
        # Copies of lower layers, by path: this layer may copy such a path again without room (its copy replaces
        # theirs in the tree), and theirs is closed then, keeping the bound.
        lower = {path: (layer, offset) for layer, read in sorted(self.decompressed.items()) if layer < index
                 for offset, path in read.paths.items() if offset in read.copies}
        read = read_compressed(blob, index, kind, wanted, self.directory, self.progress, blob.disk_name,
                               wanted.copies - held, frozenset(lower))
        for path in set(read.paths.values()) & set(lower):
            layer, offset = lower[path]
            os.close(self.decompressed[layer].copies.pop(offset).fd)
        return read

    def _keep_referenced(self) -> None:
        """Close the copies of files no longer in the image (replaced or whited out by a later layer)."""
        referenced = {(m.layer, m.offset) for m in self.tree.entries.values() if m.kind == FILE}
        for index, layer in self.decompressed.items():
            for offset in [o for o in layer.copies if (index, o) not in referenced]:
                os.close(layer.copies.pop(offset).fd)

    def copied(self, found: LayerMember) -> bool:
        """Whether the bytes of `found` can be had without reading its layer again (false only for a file of
        a compressed layer beyond the copies the first reading kept)."""
        return self.kinds[found.layer] is None or found.offset in self.decompressed[found.layer].copies

    def partial(self, found: LayerMember) -> bool:
        """Whether only the head of `found` can be read (a compressed layer's file, when heads were wanted)."""
        if self.kinds[found.layer] is None or self.wanted.limit is None:
            return False
        copy = self.decompressed[found.layer].copies.get(found.offset)
        return not copy.complete if copy is not None else found.size > self.wanted.limit

    def source(self, image_path: str, found: LayerMember) -> DiskSource:
        """The bytes of the regular file `found`, for qemu-img and the header checks."""
        blob = self.blobs[found.layer]
        if self.kinds[found.layer] is None:
            return TarMember(image_path, str(blob.path), blob.offset + found.offset, found.size,
                             () if blob.fd is None else (blob.fd,))
        layer = self.decompressed[found.layer]
        copy = layer.copies.get(found.offset)
        if copy is None:  # not the file guessed: the layer once more, for it alone
            again = self._decompress(found.layer, Wanted.at(found.offset, self.wanted.limit))
            copy = again.copies.pop(found.offset)
            again.close()
            layer.copies[found.offset] = copy
        return CopiedFile(image_path, copy.fd, found.size, self.directory, copy.complete, copy.linkable)

    def vouch(self) -> None:
        """Wait until every blob from outside is hashed and compared with its digest (those read by cdisk's own
        decompression were, in that pass): to be called before anything of the image is published.

        Raises:
            ImageError: a blob does not hash to its digest.
        """
        if self.checks is not None:
            self.checks.verify()

    def _vouch_after_refusal(self) -> None:
        """A layer refused for what its bytes say is told only once they are vouched for: the plain blobs' checks
        are waited for, a compressed blob whose pass did not end (so did not check it) is hashed whole (one more
        read; a docker-archive's compressed layer, named by its tar's digest, cannot be without its stream)."""
        self.vouch()
        compressed = [blob for index, (blob, kind) in enumerate(zip(self.blobs, self.kinds, strict=True))
                      if blob.outside and kind is not None and not blob.tar_digest and index not in self.decompressed]
        if compressed:
            BlobChecks(compressed).verify()

    def close(self) -> None:
        if self.checks is not None:
            self.checks.stop()
            self.checks = None
        for layer in self.decompressed.values():
            layer.close()
        self.decompressed.clear()
