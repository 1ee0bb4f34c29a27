"""The files of a saved image, wherever they lie: in a directory (an OCI layout) or inside one tar (an
oci-archive, a docker-archive). JSON documents are read whole (bounded, a blob's checked against its digest);
a layer is handed out as a byte range of a file that cdisk holds open, never copied.

Both kinds are untrusted (a layout on a USB disk, an archive copied from elsewhere), and their files may change
while cdisk reads them. So every file is opened once — in a directory component by component from a
descriptor of the root, never following a symlink, never blocking on a FIFO, and only if it is a regular file —
and read only through that descriptor from then on: qemu-img too, as /dev/fd/N. In a tar, names are cleaned
as Go cleans them, symlinks are followed inside the tar's own names only, a few hops at most, and a name that
occurs twice is refused (readers differ on which one counts).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cdisk.core.errors import ImageError, LayerRefused
from cdisk.core.oci import go_json
from cdisk.core.oci.blob import LayerBlob, own_fd
from cdisk.core.paths import PATH_MAX, go_clean
from cdisk.core.tar_headers import REGULAR, SYMLINK, TarEntry, read_entries

JSON_LIMIT = 4 << 20  # an index, a manifest, a config: a few KiB each
LAYERS_LIMIT = 500  # overlay stacks at most ~500 layers; an engine would refuse more
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MEMBERS_LIMIT = 100_000  # an image archive holds a few files per layer
SYMLINK_HOPS = 8
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


class ImageFiles(Protocol):
    """A saved image's files by name (`index.json`, `blobs/sha256/…`, `manifest.json`)."""

    # How errors name these files ("the archive docker saved", "oci-archive:/media/vm.tar"), and what to do.
    what: str
    fix: str

    def json(self, name: str) -> Any:
        """The JSON document `name` (a blob's content checked against the digest in its name)."""

    def blob(self, name: str, digest: str) -> LayerBlob:
        """The file `name` as a layer named `digest`, held open by
        a descriptor of its own that the caller closes."""

    def close(self) -> None:
        """Close what the files hold open (not the layers handed out)."""


def _clean(name: str) -> str:
    return go_clean("/" + name).lstrip("/")


def _regular(fd: int, name: str, files: ImageFiles) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageError(f"{name} of {files.what} is not a regular file; {files.fix}")
    return st


def _parse(data: bytes, name: str, files: ImageFiles) -> Any:
    match = _BLOB_NAME.match(name)
    if match and hashlib.sha256(data).hexdigest() != match.group(1):
        raise ImageError(f"{name} of {files.what} does not match its digest; {files.fix}")
    try:
        return go_json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ImageError(f"{name} of {files.what} is not JSON cdisk reads ({type(error).__name__}); "
                         f"{files.fix}") from None


def _read_json(fd: int, offset: int, size: int, name: str, files: ImageFiles) -> Any:
    if size > JSON_LIMIT:
        raise ImageError(f"{name} of {files.what} is larger than {JSON_LIMIT} bytes; {files.fix}")
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ImageError(f"{name} of {files.what} ends early; {files.fix}")
    return _parse(data, name, files)


@dataclass
class DirectoryFiles:
    """The files of an OCI layout directory, each opened once from the one descriptor of its root."""

    root: Path
    what: str
    fix: str
    _root_fd: int | None = field(default=None, init=False)

    def _root(self) -> int:
        if self._root_fd is None:
            try:
                self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as error:
                raise ImageError(f"cannot open {self.what}: {error.strerror}; {self.fix}") from None
        return self._root_fd

    def _open(self, name: str) -> int:
        cleaned = _clean(name)
        parts = cleaned.split("/")
        if cleaned in ("", ".") or ".." in parts:
            raise ImageError(f"{name[:200]!r} is not a file name inside {self.what}; {self.fix}")
        try:
            fd = os.dup(self._root())
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                finally:
                    os.close(fd)
                fd = inner
            try:
                # O_PATH opens nothing (a device's open can have effects, a FIFO's blocks): the file is judged
                # by its descriptor first, then opened for reading through that very descriptor.
                found = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise ImageError(f"cannot open {name} of {self.what}: {error.strerror} (a missing file, or a "
                             f"directory that is a symlink); {self.fix}") from None
        try:
            kind = stat.S_IFMT(os.fstat(found).st_mode)
            if kind == stat.S_IFLNK:
                raise ImageError(f"{name} of {self.what} is a symlink, which no file of a layout may be; {self.fix}")
            if kind != stat.S_IFREG:
                raise ImageError(f"{name} of {self.what} is not a regular file; {self.fix}")
            leaf = os.open(f"/proc/self/fd/{found}", _READ)  # the very file judged: no second look
        except OSError as error:
            raise ImageError(f"cannot open {name} of {self.what}: {error.strerror}; {self.fix}") from None
        finally:
            os.close(found)
        return leaf

    def json(self, name: str) -> Any:
        fd = self._open(name)
        try:
            return _read_json(fd, 0, os.fstat(fd).st_size, _clean(name), self)
        finally:
            os.close(fd)

    def blob(self, name: str, digest: str) -> LayerBlob:
        """The blob, held open by a descriptor of its own (the caller closes `LayerBlob.fd`)."""
        opened = self._open(name)
        try:
            fd = own_fd(opened)
        finally:
            os.close(opened)
        return LayerBlob(Path(f"/dev/fd/{fd}"), 0, os.fstat(fd).st_size, digest, fd=fd)

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None


@dataclass
class TarFiles:
    """The members of one tar, opened once and read where they lie, with Go's reader."""

    archive: Path
    what: str
    fix: str
    _fd: int | None = field(default=None, init=False)
    _entries: dict[str, TarEntry] | None = field(default=None, init=False)

    def fd(self) -> int:
        if self._fd is None:
            try:
                fd = os.open(self.archive, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as error:
                raise ImageError(f"cannot open {self.what}: {error.strerror}; {self.fix}") from None
            _regular(fd, str(self.archive), self)
            self._fd = fd
        return self._fd

    def entries(self) -> dict[str, TarEntry]:
        if self._entries is None:
            fd = self.fd()
            entries: dict[str, TarEntry] = {}
            try:
                with os.fdopen(os.dup(fd), "rb") as f:
                    for count, entry in enumerate(read_entries(f, os.fstat(fd).st_size)):
                        name = _clean(entry.name)
                        if count >= MEMBERS_LIMIT or len(entry.name) > PATH_MAX:
                            raise ImageError(f"{self.what} holds more than {MEMBERS_LIMIT} members or a name "
                                             f"longer than {PATH_MAX} bytes: not an image archive; {self.fix}")
                        if name in entries:
                            raise ImageError(f"{self.what} holds {name!r} twice (tar readers differ on which "
                                             f"counts); {self.fix}")
                        entries[name] = entry
            except LayerRefused as error:
                raise ImageError(f"{self.what} is not a tar cdisk can read: {error.what} at byte {error.offset}; "
                                 f"{self.fix}") from None
            except OSError as error:
                raise ImageError(f"cannot read {self.what}: {error.strerror}; {self.fix}") from None
            self._entries = entries
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
        raise ImageError(f"{self.what} has no file {name[:200]!r} that its manifest names; {self.fix}")

    def json(self, name: str) -> Any:
        entry = self.member(name)
        return _read_json(self.fd(), entry.data_offset, entry.size, _clean(name), self)

    def blob(self, name: str, digest: str) -> LayerBlob:
        """The member, in the archive held open by a descriptor of its own (the caller closes `LayerBlob.fd`)."""
        entry = self.member(name)
        fd = own_fd(self.fd())
        return LayerBlob(Path(f"/dev/fd/{fd}"), entry.data_offset, entry.size, digest, fd=fd)

    def close(self) -> None:
        """Close the archive (the layers handed out keep descriptors of their own)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def need(value: Any, kind: type, what: str, files: ImageFiles) -> Any:
    """`value` when it is of `kind` (a dict, a list, a str), else the one line an ill-formed document gets."""
    if not isinstance(value, kind):
        raise ImageError(f"{what} in {files.what} is not a {kind.__name__}; {files.fix}")
    return value


def field_of(document: dict[str, Any], key: str, kind: type, files: ImageFiles) -> Any:
    """`document[key]`, of `kind` (missing or null: an empty one)."""
    value = document.get(key)
    return kind() if value is None else need(value, kind, repr(key), files)
