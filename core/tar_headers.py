"""A strict reader of layer tar headers that follows Go's `archive/tar`, as podman unpacks layers.

podman (containers/storage) reads a layer with Go's `archive/tar` `Reader.Next()` (Go 1.19 in podman
4.3; the rules below still hold in current Go). Python's `tarfile` reads some headers differently, so
cdisk reads them itself, with Go's rules:

- 512-byte blocks; a header whose checksum (unsigned or signed sum, the field read as octal) fails
  is refused. The magic decides the format: `ustar\\0` is USTAR/PAX (STAR when `tar\\0` ends the
  block), `ustar ` + ` \\0` is GNU, anything else V7.
- Numeric fields are octal (spaces and NULs trimmed, cut at the first NUL) or base-256 (high bit of
  the first byte set); size, mode, uid, gid and mtime always, devmajor/devminor beyond V7, atime and
  ctime of STAR. A field Go cannot parse, or a negative size, is refused: Go rejects the layer.
- The end: two zero blocks, or the end of the blob at a block boundary, or after one zero block.
  A zero block followed by a header, or a blob that ends inside a header or a member's data, is refused.
  Whatever follows the end is never read (podman does not read it either).
- PAX `x` records (`"%d %s=%s\\n"`, parsed by hand, linearly) apply to the next member; a value
  that is empty keeps the header's own. path, linkpath and size set the name, link and data
  length; uid, gid, size and times must parse as Go parses them. GNU `L`/`K` long names apply to the
  next member. Both are limited to 1 MiB, as in Go, and a PAX header to `MAX_PAX_RECORDS` records.
- A typeflag `\\0` member is a directory when its final name ends in `/`, else a regular file.
  Link, symlink, device, directory and FIFO members have no data, whatever their size says.
- A PAX global header `g` is returned as an entry of its own (Go does), and its records apply to
  nothing; `layers.unpack.members_from_tar` judges its name as containers/storage treats it.
- A member with PAX sparse records Go recognises (GNU.sparse.major/minor 0.0, 0.1, 1.0, or a sparse
  map) is a sparse member, named by GNU.sparse.name; cdisk never reads its data.

Refused, because tar readers (Go, Python's `tarfile`, GNU tar, Go's older releases) read them
differently, so no single reading is certain: a second PAX header or a second long name/link before
one member; a PAX path (linkpath) together with a GNU long name (link); an empty PAX path or
linkpath, or an empty GNU long name; a meta header followed by a global header or by the end; a
record length that is not plain digits; GNU.sparse.* records on a member Go does not treat as sparse;
a global header with path, linkpath, size or GNU.sparse.* records; anything in the ustar prefix field
(bytes 345-500) of a header that has no ustar magic, and a star prefix that fills its field; a typeflag
`\\0` member whose trailing `/` differs between its header name and its final name; old GNU sparse
members (`S`, which containers/storage cannot unpack); xattrs overlayfs would act on
(trusted.overlay.*, user.overlay.*, user.fuseoverlayfs.*), which could hide files of lower layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Protocol, cast

from cdisk.core.errors import LayerRefused

BLOCK = 512
# Go's maxSpecialFileSize: the most a PAX header or a GNU long name may hold.
MAX_SPECIAL = 1 << 20
# Real writers put a handful of records in a PAX header; this bounds the work one header can cause.
MAX_PAX_RECORDS = 4096

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCK_DEVICE, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
GLOBAL = "g"
# Go's isHeaderOnlyType: these carry no data, whatever their size field says.
_HEADER_ONLY = {HARDLINK, SYMLINK, CHAR, BLOCK_DEVICE, DIRECTORY, FIFO}
_OVERLAY_XATTRS = (b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs.")
_ZERO_BLOCK = bytes(BLOCK)
_HIGH_BYTES = bytes(range(0x80, 0x100))
_DECIMAL, _OCTAL = b"0123456789", b"01234567"
_V7, _USTAR, _STAR, _GNU = "v7", "ustar", "star", "gnu"
ADVICE = LayerRefused.ADVICE


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member as Go's `Reader.Next()` returns it (name not yet cleaned).

    `data_offset` is where its data starts in the blob; `size` is its logical size (a sparse member's
    real size), and a member of a header-only type has no data.
    """

    name: str
    type: str
    offset: int
    data_offset: int
    size: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    sparse: bool = False


def _text(raw: bytes) -> str:
    # Names are bytes to Go and to Linux; surrogateescape keeps them, as os.listdir and argv do.
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _octal(field: bytes) -> int | None:
    """Go's parseOctal: None where Go sets ErrHeader."""
    digits = field.strip(b" \x00")
    if not digits:
        return 0
    digits = _cstr(digits)
    if digits.translate(None, _OCTAL):
        return None
    value = int(digits, 8)
    if value >> 64:
        return None
    return value - (1 << 64) if value >> 63 else value


# Layers repeat the same mode, uid, gid and mtime fields member after member.
@lru_cache(maxsize=4096)
def _numeric(field: bytes) -> int | None:
    """Go's parseNumeric: base-256 when the first byte's high bit is set, else octal."""
    if not field or not field[0] & 0x80:
        return _octal(field)
    invert = 0xFF if field[0] & 0x40 else 0
    value = 0
    for index, byte in enumerate(field):
        byte ^= invert
        if index == 0:
            byte &= 0x7F
        if value >> 56:
            return None
        value = value << 8 | byte
    if value >> 63:
        return None
    return ~value if invert else value


def go_int(text: bytes) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64): an optional sign, decimal digits, within int64."""
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if not body or body.translate(None, _DECIMAL):
        return None
    digits = body.lstrip(b"0")
    if len(digits) > 19:
        return None
    value = int(digits or b"0")
    if text[:1] == b"-":
        value = -value
    return value if -(1 << 63) <= value < 1 << 63 else None


def _pax_time_ok(text: bytes) -> bool:
    """Go's parsePAXTime accepts it."""
    seconds, _, fraction = text.partition(b".")
    return go_int(seconds) is not None and not fraction.translate(None, _DECIMAL)


def parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
    """Go's parsePAX: the records of one PAX header, later keys replacing earlier ones."""
    records: dict[bytes, bytes] = {}
    sparse_map: list[bytes] = []
    pos = count = 0
    while pos < len(data):
        count += 1
        if count > MAX_PAX_RECORDS:
            raise LayerRefused(f"a PAX header with more than {MAX_PAX_RECORDS} records", offset)
        space = data.find(b" ", pos)
        length_text = data[pos:space]
        # Go also takes a sign or leading zeros here, Python's tarfile does not: plain digits only.
        if space < 0 or not length_text or length_text.translate(None, _DECIMAL) or length_text[:1] == b"0":
            raise LayerRefused("a PAX record whose length is not plain digits", offset)
        length = go_int(length_text)
        if length is None or length < 5 or length > len(data) - pos or length <= space - pos + 1:
            raise LayerRefused("a PAX record whose length does not fit its header", offset)
        end = pos + length
        if data[end - 1:end] != b"\n":
            raise LayerRefused("a PAX record that does not end with a newline", offset)
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals or not key:
            raise LayerRefused("a PAX record without a key", offset)
        if b"\x00" in (value if key in (b"path", b"linkpath", b"uname", b"gname") else key):
            raise LayerRefused("a PAX record with a NUL byte", offset)
        pos = end
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            expected = b"GNU.sparse.offset" if len(sparse_map) % 2 == 0 else b"GNU.sparse.numbytes"
            if key != expected or b"," in value:
                raise LayerRefused("a PAX sparse map out of order", offset)
            sparse_map.append(value)
        else:
            records[key] = value
    if sparse_map:
        records[b"GNU.sparse.map"] = b",".join(sparse_map)
    return records


def _format(block: bytes) -> str | None:
    """Go's getFormat: None when the checksum fails."""
    stored = _octal(block[148:156])
    spaced = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(spaced)
    signed = unsigned - 256 * (BLOCK - len(spaced.translate(None, _HIGH_BYTES)))
    if stored is None or stored not in (unsigned, signed):
        return None
    magic, version = block[257:263], block[263:265]
    if magic == b"ustar\x00":
        return _STAR if block[508:512] == b"tar\x00" else _USTAR
    if magic == b"ustar " and version == b" \x00":
        return _GNU
    return _V7


def starts_a_tar(block: bytes) -> bool:
    """Whether `block` is a tar header Go would read (its checksum holds): a layer of a disk artifact that does
    not start with one is the disk itself. A zero block is not taken as a tar: a raw disk may start with one.
    """
    return len(block) == BLOCK and block != _ZERO_BLOCK and _format(block) is not None


@dataclass
class _Header:
    name: bytes
    linkname: bytes
    type: str
    size: int
    devmajor: int
    devminor: int


# The numeric fields Go parses, per format (size first, then the device numbers).
_COMMON = [("size", 124, 136), ("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("mtime", 136, 148)]
_DEVICES = [("devmajor", 329, 337), ("devminor", 337, 345)]
_FIELDS = {
    _V7: _COMMON,
    _USTAR: [_COMMON[0], *_DEVICES, *_COMMON[1:]],
    _GNU: [_COMMON[0], *_DEVICES, *_COMMON[1:]],
    _STAR: [_COMMON[0], *_DEVICES, *_COMMON[1:], ("atime", 476, 488), ("ctime", 488, 500)],
}


def _header(block: bytes, offset: int) -> _Header:
    """Go's readHeader on one block, refusing what Go rejects or what other readers take otherwise."""
    fmt = _format(block)
    if fmt is None:
        raise LayerRefused("a block that is not a tar header (bad checksum)", offset)
    fields = _FIELDS[fmt]
    values = [_numeric(block[start:end]) for _, start, end in fields]
    if None in values:
        field, start, end = fields[values.index(None)]
        raise LayerRefused(f"a tar header whose {field} field is not a number ({block[start:end]!r})", offset)
    name = _cstr(block[0:100])
    prefix = b""
    if fmt == _USTAR:
        prefix = _cstr(block[345:500])
    elif fmt == _STAR:
        if b"\x00" not in block[345:476]:
            raise LayerRefused("a star header whose name prefix fills its field", offset)
        prefix = _cstr(block[345:476])
    elif block[345]:
        # Go ignores the prefix field without the ustar magic (save for a fallback for old Go writers
        # on GNU headers), Python's tarfile prepends it to the name.
        raise LayerRefused("a non-ustar tar header with data in the ustar name prefix field", offset)
    if prefix:
        name = prefix + b"/" + name
    numbers = [value or 0 for value in values]
    devmajor, devminor = (0, 0) if fmt == _V7 else (numbers[1], numbers[2])
    return _Header(name, _cstr(block[157:257]), chr(block[156]), numbers[0], devmajor, devminor)


@dataclass
class _Pending:
    """What meta headers said about the next member."""

    pax: dict[bytes, bytes] | None = None
    long_name: bytes | None = None
    long_link: bytes | None = None

    def any(self) -> bool:
        return self.pax is not None or self.long_name is not None or self.long_link is not None


def _check_xattrs(records: dict[bytes, bytes], offset: int) -> None:
    for key in records:
        if key.startswith(b"SCHILY.xattr.") and key[len(b"SCHILY.xattr."):].startswith(_OVERLAY_XATTRS):
            raise LayerRefused(f"an xattr overlayfs acts on ({_text(key[13:])})", offset)


def _go_sparse(records: dict[bytes, bytes]) -> bool:
    """Go's readGNUSparsePAXHeaders: whether these records make the member sparse."""
    major, minor = records.get(b"GNU.sparse.major", b""), records.get(b"GNU.sparse.minor", b"")
    if (major, minor) in ((b"0", b"0"), (b"0", b"1"), (b"1", b"0")):
        return True
    if major or minor:
        return False
    return bool(records.get(b"GNU.sparse.map"))


def _member(header: _Header, pending: _Pending, offset: int, data_offset: int) -> tuple[TarEntry, int]:
    """Go's merge of PAX records and GNU long names into the member's header, and its data's length."""
    name, linkname, size, kind = header.name, header.linkname, header.size, header.type
    records = pending.pax or {}
    for key, value in records.items():
        if key in (b"path", b"linkpath"):
            if not value:
                raise LayerRefused(f"an empty PAX {key.decode()}", offset)
            long_too = pending.long_name if key == b"path" else pending.long_link
            if long_too is not None:
                raise LayerRefused(f"a PAX {key.decode()} and a GNU long name for one member", offset)
            if key == b"path":
                name = value
            else:
                linkname = value
        elif not value:
            continue
        elif key == b"size":
            parsed = go_int(value)
            if parsed is None:
                raise LayerRefused("a PAX size that is not a number", offset)
            size = parsed
        elif key in (b"uid", b"gid") and go_int(value) is None:
            raise LayerRefused(f"a PAX {key.decode()} that is not a number", offset)
        elif key in (b"atime", b"mtime", b"ctime") and not _pax_time_ok(value):
            raise LayerRefused(f"a PAX {key.decode()} that is not a time", offset)
    _check_xattrs(records, offset)
    if pending.long_name is not None:
        name = pending.long_name
    if pending.long_link is not None:
        linkname = pending.long_link
    if kind == "\x00":
        if name != header.name and name.endswith(b"/") != header.name.endswith(b"/"):
            raise LayerRefused("an old-style member whose names disagree on being a directory", offset)
        kind = DIRECTORY if name.endswith(b"/") else REGULAR
    if size < 0:
        raise LayerRefused("a member with a negative size", offset)
    sparse = _go_sparse(records)
    if any(key.startswith(b"GNU.sparse.") for key in records) and not sparse:
        raise LayerRefused("GNU.sparse records on a member that is not sparse", offset)
    logical = size
    if sparse:
        if kind in _HEADER_ONLY:
            raise LayerRefused("sparse records on a member that holds no data", offset)
        name = records.get(b"GNU.sparse.name") or name
        real = records.get(b"GNU.sparse.size") or records.get(b"GNU.sparse.realsize")
        if real:
            parsed = go_int(real)
            if parsed is None:
                raise LayerRefused("a sparse member whose size is not a number", offset)
            logical = parsed
    entry = TarEntry(_text(name), kind, offset, data_offset, logical, _text(linkname), header.devmajor,
                     header.devminor, sparse)
    return entry, 0 if kind in _HEADER_ONLY else size


def _global(header: _Header, records: dict[bytes, bytes], offset: int, data_offset: int) -> TarEntry:
    for key in records:
        if key in (b"path", b"linkpath", b"size") or key.startswith(b"GNU.sparse."):
            # Go applies a global header to nothing; Python's tarfile and GNU tar apply it to every member.
            raise LayerRefused(f"a PAX global header with a {_text(key)} record", offset)
    return TarEntry(_text(header.name), GLOBAL, offset, data_offset, 0)


class Stream(Protocol):
    """A layer read forward only (a compressed layer as it decompresses): `read` returns fewer bytes than asked
    only at the end; `skip_to` moves forward to `position` and says whether the layer reaches it.
    """

    position: int

    def read(self, length: int) -> bytes: ...

    def skip_to(self, position: int) -> bool: ...

    def at_end(self) -> bool: ...


def read_entries(blob: BinaryIO | Stream, blob_size: int | None) -> Iterator[TarEntry]:
    """The members of one layer tar, in order, as Go's Reader returns them.

    `blob_size` None reads `blob` as a `Stream`: its members' data are read (or skipped) between two entries,
    and the layer's end is where the stream ends.

    Raises:
        LayerRefused: a header Go rejects, or one that tar readers could read differently.
    """
    pos = 0
    pending = _Pending()
    stream = cast(Stream, blob) if blob_size is None else None

    def read(offset: int, length: int, what: str) -> bytes:
        if stream is not None:
            data = stream.read(length) if stream.skip_to(offset) else b""
            if len(data) < length:
                raise LayerRefused(f"the layer ends inside {what}", offset)
            return data
        assert blob_size is not None
        if offset + length > blob_size:
            raise LayerRefused(f"the layer ends inside {what}", offset)
        seekable = cast(BinaryIO, blob)
        seekable.seek(offset)
        return seekable.read(length)

    def ends_at(offset: int) -> bool:
        if stream is None:
            assert blob_size is not None
            return offset >= blob_size
        # A stream that ends before `offset` ends inside the padding of the last member (its data were read
        # to their end before): that is the end, as at a cut of a blob.
        return not stream.skip_to(offset) or stream.at_end()

    while True:
        if ends_at(pos):
            break
        block = read(pos, BLOCK, "a header")
        if block == _ZERO_BLOCK:
            if not ends_at(pos + BLOCK) and read(pos + BLOCK, BLOCK, "a header") != _ZERO_BLOCK:
                raise LayerRefused("a zero block followed by another header", pos + BLOCK)
            break
        header = _header(block, pos)
        data_offset = pos + BLOCK
        kind = header.type
        if header.size < 0:
            raise LayerRefused("a member with a negative size", pos)
        length = header.size
        if kind in ("x", "g", "L", "K"):
            if header.size > MAX_SPECIAL:
                raise LayerRefused("a PAX or GNU long-name header larger than 1 MiB", pos)
            data = read(data_offset, header.size, "a PAX or GNU long-name header")
            if kind == "x":
                if pending.pax is not None:
                    raise LayerRefused("two PAX headers for one member", pos)
                pending.pax = parse_pax(data, pos)
            elif kind == "g":
                if pending.any():
                    raise LayerRefused("a PAX or GNU long-name header followed by a global header", pos)
                yield _global(header, parse_pax(data, pos), pos, data_offset)
            else:
                value = _cstr(data)
                if not value:
                    raise LayerRefused("an empty GNU long name", pos)
                if (pending.long_name if kind == "L" else pending.long_link) is not None:
                    raise LayerRefused("two GNU long names for one member", pos)
                if kind == "L":
                    pending.long_name = value
                else:
                    pending.long_link = value
        elif kind == "S":
            raise LayerRefused("an old GNU sparse member (podman cannot unpack it)", pos)
        else:
            member, length = _member(header, pending, pos, data_offset)
            pending = _Pending()
            if blob_size is not None and data_offset + length > blob_size:
                raise LayerRefused("the layer ends inside a member's data", pos)
            yield member
            if stream is not None and not stream.skip_to(data_offset + length):
                raise LayerRefused("the layer ends inside a member's data", pos)
        # Go reads no further than the padding of the last member: a blob cut inside it has ended.
        pos = data_offset + -(-length // BLOCK) * BLOCK
    if pending.any():
        raise LayerRefused("a PAX or GNU long-name header followed by no member", pos)
