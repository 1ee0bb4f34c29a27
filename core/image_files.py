"""The files of a saved image, wherever they lie: in a directory (an OCI layout) or inside one tar (an
oci-archive, a docker-archive). JSON documents are read whole (bounded); a layer is handed out as a byte range
of the file that holds it, never copied.

Both kinds are untrusted (a layout on a USB disk, an archive copied to an air-gapped host): a name is cleaned
as Go cleans it and must stay inside; in a directory no blob may be a symlink or lead out of it, in a tar
symlinks are followed inside the tar's own names only, a few hops at most.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cdisk.core.errors import ImageError, LayerRefused
from cdisk.core.layer_unpack import go_clean
from cdisk.core.saved_layers import LayerBlob
from cdisk.core.tar_headers import REGULAR, SYMLINK, TarEntry, read_entries

JSON_LIMIT = 16 << 20  # index, manifests, configs: a few KiB each
SYMLINK_HOPS = 8


class ImageFiles(Protocol):
    """A saved image's files by name (`index.json`, `blobs/sha256/…`, `manifest.json`)."""

    # How errors name these files ("the archive docker saved", "oci-archive:/media/vm.tar"), and what to do.
    what: str
    fix: str

    def json(self, name: str) -> Any:
        """The JSON document `name`."""

    def blob(self, name: str, digest: str, advice: str) -> LayerBlob:
        """The file `name` as a layer named `digest` (`advice`: what to do should it be compressed)."""


def _clean(name: str) -> str:
    return go_clean("/" + name).lstrip("/")


def _parse(data: bytes, name: str, files: ImageFiles) -> Any:
    try:
        return json.loads(data)
    except ValueError as error:
        raise ImageError(f"{name} of {files.what} is not JSON ({error}); {files.fix}") from None


@dataclass
class DirectoryFiles:
    """The files of an OCI layout directory."""

    root: Path
    what: str
    fix: str

    def _path(self, name: str) -> Path:
        path = self.root / _clean(name)
        root = os.path.realpath(self.root)
        if path.is_symlink() or not os.path.realpath(path).startswith(root + os.sep):
            raise ImageError(f"{name} of {self.what} is a symlink or lies outside it; {self.fix}")
        return path

    def json(self, name: str) -> Any:
        path = self._path(name)
        try:
            with path.open("rb") as f:
                data = f.read(JSON_LIMIT + 1)
        except OSError as error:
            raise ImageError(f"cannot read {name} of {self.what}: {error.strerror}; {self.fix}") from None
        if len(data) > JSON_LIMIT:
            raise ImageError(f"{name} of {self.what} is larger than {JSON_LIMIT} bytes; {self.fix}")
        return _parse(data, name, self)

    def blob(self, name: str, digest: str, advice: str) -> LayerBlob:
        path = self._path(name)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise ImageError(f"{self.what} lacks {name} ({error.strerror}); {self.fix}") from None
        return LayerBlob(path, 0, size, digest, advice)


@dataclass
class TarFiles:
    """The members of one tar, read where they lie, with Go's reader."""

    archive: Path
    what: str
    fix: str
    _entries: dict[str, TarEntry] | None = field(default=None, init=False)

    def entries(self) -> dict[str, TarEntry]:
        if self._entries is None:
            try:
                with self.archive.open("rb") as f:
                    self._entries = {_clean(e.name): e for e in read_entries(f, os.fstat(f.fileno()).st_size)}
            except LayerRefused as error:
                raise ImageError(f"{self.what} is not a tar cdisk can read: {error.what} at byte {error.offset}; "
                                 f"{self.fix}") from None
            except OSError as error:
                raise ImageError(f"cannot read {self.what}: {error.strerror}; {self.fix}") from None
        return self._entries

    def member(self, name: str) -> TarEntry:
        """The regular file `name`, symlinks followed inside the tar."""
        entries, wanted = self.entries(), _clean(name)
        for _ in range(SYMLINK_HOPS):
            entry = entries.get(wanted)
            if entry is None:
                break
            if entry.type == SYMLINK:
                wanted = _clean(posixpath.join(posixpath.dirname(wanted), entry.linkname))
                continue
            if entry.type == REGULAR and not entry.sparse:
                return entry
            break
        raise ImageError(f"{self.what} has no file {name!r} that its manifest names; {self.fix}")

    def json(self, name: str) -> Any:
        entry = self.member(name)
        if entry.size > JSON_LIMIT:
            raise ImageError(f"{name} of {self.what} is larger than {JSON_LIMIT} bytes; {self.fix}")
        try:
            with self.archive.open("rb") as f:
                f.seek(entry.data_offset)
                data = f.read(entry.size)
        except OSError as error:
            raise ImageError(f"cannot read {name} of {self.what}: {error.strerror}; {self.fix}") from None
        return _parse(data, name, self)

    def blob(self, name: str, digest: str, advice: str) -> LayerBlob:
        entry = self.member(name)
        return LayerBlob(self.archive, entry.data_offset, entry.size, digest, advice)
