"""`cdisk verify`: does a target hold exactly the image's disk? Compared in place, nothing extracted. Without a
target: do the image's own bytes still hash to what the image says (rot in a store or a file)?
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from cdisk.core.disk import formats
from cdisk.core.engines import choice, store_files, store_pin
from cdisk.core.engines.seam import Image
from cdisk.core.errors import Denied, ImageError, UnsafeImageError
from cdisk.core.layers import tar_split
from cdisk.core.oci.blob import LayerBlob, close_blobs, compression_of, read_head
from cdisk.core.progress import Progress
from cdisk.core.qemu import qemu_img
from cdisk.core.reading.pipeline import opened_disk
from cdisk.core.request import ImageRequest, ReadRequest
from cdisk.core.sources import read_span
from cdisk.core.target import Target, existing_target, os_errors


@dataclass(frozen=True)
class Verdict:
    """The answer: `first_difference` is None when the target holds exactly the disk."""

    image: str
    engine: str
    image_id: str
    disk: str
    target: str
    target_format: str
    identical: bool
    first_difference: int | None
    method: str


# Formats cdisk writes (`-O`) that an image's disk may not be (`formats.detect_format` refuses QED there, and
# takes a Parallels disk for raw): told apart here, on a target the operator wrote.
_PARALLELS_MAGICS = (b"WithoutFreeSpace", b"WithouFreSpacExt")
_QED_MAGIC = b"QED\0"
_QED_BACKING_FILE = 1  # QED_F_BACKING_FILE in the header's features, at byte 16


def _written_format(header: bytes) -> str | None:
    """qed or parallels when the header is one of theirs (a QED that names a backing file is refused), else None."""
    if header.startswith(_PARALLELS_MAGICS):
        return "parallels"
    if header.startswith(_QED_MAGIC) and len(header) >= 24:
        if struct.unpack_from("<Q", header, 16)[0] & _QED_BACKING_FILE:
            raise UnsafeImageError("the target is a QED with a backing file, which cdisk does not open; verify a "
                                   "self-contained disk")
        return "qed"
    return None


def _target_format(target: Target) -> str:
    # The target is told by its bytes too: a qcow2 there that names a backing file is refused.
    with os_errors(target.path):
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)

            def read_at(offset: int, length: int) -> bytes:
                return read_span(fd, 0, size, offset, length)

            return _written_format(read_at(0, 64)) or formats.detect_format(read_at)
        finally:
            os.close(fd)


def _target_node(target: Target) -> dict[str, Any]:
    if target.is_block:
        return {"driver": "host_device", "filename": target.path}  # qemu's file driver refuses a device
    return qemu_img.file_node(target.path)


def verify(image: ImageRequest, read: ReadRequest, target_path: str, progress: Progress) -> Verdict:
    """Compare the image's disk with `target_path` through qemu-img.

    TARGET is checked first: a missing one costs no pull.
    """
    planned = existing_target(target_path)
    target_format = _target_format(planned)
    with opened_disk(image, read, planned, progress) as disk:
        target_spec = qemu_img.image_spec(target_format, _target_node(planned))
        target_size = qemu_img.info(target_spec).virtual_size
        progress.stage("comparing")
        difference = qemu_img.compare(disk.spec, target_spec, disk.source.pass_fds)
        if difference is None and target_size != disk.virtual_size:
            difference = min(target_size, disk.virtual_size)
        disk.vouch()  # a verdict on bytes no digest vouches for is none
    return Verdict(image.reference, disk.image.engine, disk.image.id, disk.source.image_path, planned.path,
                   target_format,
                   difference is None, difference, disk.reading.method)


@dataclass(frozen=True)
class LayerFinding:
    """One layer checked: the digest the image names it by, where its bytes lie (a store's layer directory, a
    file source's blob), what they hash to, and — when they differ — the files named (CRC-64s) and why."""

    digest: str
    path: str
    found: str
    intact: bool
    files: list[str]
    reason: str


@dataclass(frozen=True)
class ImageVerdict:
    """`cdisk verify IMAGE`: whether every layer of the image hashes to what the image says."""

    image: str
    engine: str
    image_id: str
    intact: bool
    checked: str  # "diff IDs" (a store's layers, reassembled from their tar-split) or "digests" (a file's blobs)
    bytes_read: int
    layers: list[LayerFinding]

    @property
    def bad(self) -> list[LayerFinding]:
        return [layer for layer in self.layers if not layer.intact]


_DAMAGED = "the store is damaged: remove the image and pull it again"
_DENIED = (errno.EACCES, errno.EPERM)


def verify_image(image: ImageRequest, progress: Progress) -> ImageVerdict:
    """Hash every layer of the image as the image names it: a store's layer reassembled from its tar-split and
    its files (its diff ID), a file source's blob as it lies (its digest). Every layer, not only the disk's: one
    read of the image's bytes at disk speed, and rot elsewhere is rot too.

    Raises:
        ImageError: the image cannot be checked (a store cdisk cannot read this way, a layer not readable).
    """
    choice.check(image)
    engine, found = choice.find(image, progress)
    if not engine.stores:
        blobs = engine.save(found, None)
        try:
            return _verify_blobs(image.reference, found, blobs, progress)
        finally:
            close_blobs(blobs)
    return _verify_store(image.reference, found, progress)


def _verify_store(reference: str, image: Image, progress: Progress) -> ImageVerdict:
    # Pinned: a layer an rmi removes meanwhile is that, not damage (podman's writers wait for the check's end).
    with store_pin.pinned(image, progress.warn):
        return _check_store(reference, image, progress)


def _check_store(reference: str, image: Image, progress: Progress) -> ImageVerdict:
    layers = store_files.stored_layers(image)
    progress.stage("checking layers")
    findings, total = [], 0
    for layer in layers:
        label = f"the tar-split of layer {layer.diff_id[7:19]}"

        def read(n: int) -> None:
            nonlocal total
            total += n
            progress.update(total, max(image.size, total))

        with _opened(layer.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) as root, \
                _opened(layer.tar_split, os.O_RDONLY | os.O_CLOEXEC) as split_fd, \
                os.fdopen(os.dup(split_fd), "rb") as split:
            try:
                done = tar_split.reassemble(split, root, label, read)
            except Denied as denied:
                raise ImageError(f"cannot read {denied.name} of layer {layer.diff_id[7:19]} ({denied.why}); run "
                                 "cdisk as the store's owner (a rootless store: podman unshare cdisk verify IMAGE)"
                                 ) from None
            files: list[str] = sorted(done.unreadable)
            reason = ""
            if done.unreadable:
                name, why = next(iter(done.unreadable.items()))
                reason = f"{name}: {why}"
            elif done.diff_id != layer.diff_id:
                split.seek(0)
                files = tar_split.crc_mismatches(split, root, label)
                reason = ("differs from what the layer's metadata says (CRC-64)" if files else
                          f"hashes to {done.diff_id}: a header or the layer's tar-split differs")
        intact = done.diff_id == layer.diff_id and not done.unreadable
        findings.append(LayerFinding(layer.diff_id, layer.directory, done.diff_id, intact, files, reason))
    return ImageVerdict(reference, image.engine, image.id, all(f.intact for f in findings), "diff IDs", total,
                        findings)


class _opened:
    """A descriptor of `path`, closed when the block ends; an unreadable one is an ImageError."""

    def __init__(self, path: str, flags: int) -> None:
        self.path, self.flags, self.fd = path, flags, -1

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, self.flags)
        except OSError as error:
            raise ImageError(f"cannot open {self.path} ({error.strerror}); {_DAMAGED}" if error.errno not in _DENIED
                             else f"cannot open {self.path} ({error.strerror}); run cdisk as the store's owner"
                             ) from None
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _verify_blobs(reference: str, image: Image, blobs: list[LayerBlob], progress: Progress) -> ImageVerdict:
    from cdisk.core.layers import digests

    progress.stage("checking layers")
    findings, total, whole = [], 0, sum(blob.size for blob in blobs)
    for blob in blobs:
        digest = digests.hasher(blob)
        inflate = zlib.decompressobj(31) if blob.tar_digest and compression_of(read_head(blob)) else None
        if blob.tar_digest and inflate is not None and compression_of(read_head(blob)) != "gzip":
            raise ImageError(f"layer {blob.short} of {reference} is compressed otherwise than with gzip, and named "
                             "by its tar's digest; cdisk cannot check it")
        assert blob.fd is not None, "a file source's blobs are held open"
        done = 0
        try:
            while done < blob.size:
                data = os.pread(blob.fd, min(tar_split.CHUNK, blob.size - done), blob.offset + done)
                if not data:
                    break
                digest.update(inflate.decompress(data) if inflate is not None else data)
                done += len(data)
                total += len(data)
                progress.update(total, whole)
        except (OSError, zlib.error) as error:
            reason = error.strerror if isinstance(error, OSError) else "its compressed bytes are damaged"
            findings.append(LayerFinding(blob.digest, _blob_file(blob), "", False, [], str(reason)))
            continue
        found = "sha256:" + digest.hexdigest()
        reason = "" if done == blob.size else f"{done} bytes where the image says {blob.size}"
        if inflate is not None and not inflate.eof and not reason:
            reason = "its compressed bytes end before their stream does"
        if found != blob.digest and not reason:
            reason = f"hashes to {found}"
        findings.append(LayerFinding(blob.digest, _blob_file(blob), found, found == blob.digest and not reason, [],
                                     reason))
    return ImageVerdict(reference, image.engine, image.id, all(f.intact for f in findings), "digests", total,
                        findings)


def _blob_file(blob: LayerBlob) -> str:
    """The file a blob lies in, as this host names it (a held blob's path is /dev/fd/N)."""
    try:
        return os.readlink(f"/proc/self/fd/{blob.fd}") if blob.fd is not None else str(blob.path)
    except OSError:
        return str(blob.path)
