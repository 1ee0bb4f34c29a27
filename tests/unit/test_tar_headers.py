"""The strict layer tar reader: Go's `archive/tar` rules on hand-written headers (pure, no podman)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cdisk.core.errors import LayerRefused
from cdisk.core.tar_headers import TarEntry, go_int, parse_pax, read_entries
from tests.images import TAR_END, gnu_long, pax_header, pax_record, tar_header, tar_member

GNU = {"magic": b"ustar ", "version": b" \x00"}
V7 = {"magic": bytes(6), "version": bytes(2)}


def entries(raw: bytes) -> list[TarEntry]:
    return list(read_entries(io.BytesIO(raw), len(raw)))


def names(raw: bytes) -> list[tuple[str, str, int, int]]:
    return [(e.name, e.type, e.data_offset, e.size) for e in entries(raw)]


def refused(raw: bytes, says: str) -> None:
    with pytest.raises(LayerRefused, match=says):
        entries(raw)


def _tarfile_bytes(fmt: int, long_name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in (("a", b"abc"), (long_name, b"xy")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_offsets_move_past_long_name_headers(fmt: int) -> None:
    # "a": header at 0, data at 512; the long name: an extra header and its block at 1024 and 1536,
    # the member's own header at 2048, data at 2560 — not where a fixed 512-byte header would put it.
    long_name = "disk/" + "ü" * 120 + ".qcow2"
    raw = _tarfile_bytes(fmt, long_name)
    assert names(raw) == [("a", "0", 512, 3), (long_name, "0", 2560, 2)]
    assert raw[2560:2562] == b"xy"


def test_ustar_prefix_names_a_member() -> None:
    assert names(tar_member("disk.qcow2", b"x", prefix=b"disk") + TAR_END) == [("disk/disk.qcow2", "0", 512, 1)]


@pytest.mark.parametrize(
    ("size_field", "size"),
    [
        (b"00000000003\x00", 3),
        (b"   3  \x00\x00\x00   ", 3),  # Go trims spaces and NULs around the digits
        (b"3\x0077777777\x00\x00", 3),  # and stops at the first NUL
        (b"\x80" + bytes(10) + b"\x03", 3),  # base-256
        (bytes(12), 0),
    ],
    ids=["octal", "spaces", "nul-inside", "base-256", "empty"],
)
def test_numeric_fields_are_read_as_go_reads_them(size_field: bytes, size: int) -> None:
    raw = tar_header("f", fields={124: size_field}) + (b"abc".ljust(512, b"\x00") if size else b"") + TAR_END
    assert names(raw) == [("f", "0", 512, size)]


def test_base_256_beyond_tarfile_is_go_valid() -> None:
    # Python's tarfile only knows 0x80/0xff as base-256 markers and stops reading here; Go (and podman) read on.
    mode = b"\x81\x00\x00\x00\x00\x00\x01\xa4"
    assert names(tar_member("f", b"x", fields={100: mode}) + tar_member("g") + TAR_END) == [
        ("f", "0", 512, 1),
        ("g", "0", 1536, 0),
    ]


def test_member_types_and_header_only_sizes() -> None:
    raw = (
        tar_member("d/", kind=b"\x00")
        + tar_member("f", b"ab", kind=b"\x00")
        + tar_header("l", b"2", size=1000, linkname="f")  # a symlink has no data, whatever its size says
        + tar_member("g")
        + TAR_END
    )
    assert [(e.name, e.type, e.data_offset, e.linkname) for e in entries(raw)] == [
        ("d/", "5", 512, ""),
        ("f", "0", 1024, ""),
        ("l", "2", 2048, "f"),
        ("g", "0", 2560, ""),
    ]


def test_pax_records_apply_to_the_next_member_only() -> None:
    raw = (
        pax_header([(b"path", b"disk/long-" + b"x" * 200), (b"mtime", b"1.5"), (b"uid", b"+7"), (b"size", b"2")])
        + tar_member("short", b"xy")
        + tar_member("next")
        + TAR_END
    )
    assert names(raw) == [("disk/long-" + "x" * 200, "0", 1536, 2), ("next", "0", 2560, 0)]


def test_gnu_long_name_and_link() -> None:
    raw = gnu_long(b"disk/" + b"n" * 150) + gnu_long(b"t" * 150, b"K") + tar_header("x", b"1", linkname="y") + TAR_END
    [entry] = entries(raw)
    assert (entry.name, entry.linkname, entry.type) == ("disk/" + "n" * 150, "t" * 150, "1")


def test_global_header_is_an_entry_whose_records_apply_to_nothing() -> None:
    raw = pax_header([(b"mtime", b"5"), (b"comment", b"x")], b"g", b"pax_global_header")
    raw += tar_member("f", b"a") + TAR_END
    assert names(raw) == [("pax_global_header", "g", 512, 0), ("f", "0", 1536, 1)]


@pytest.mark.parametrize(
    "tail",
    [b"", bytes(512), TAR_END + b"junk" * 500, TAR_END + tar_member("ghost")],
    ids=["eof-at-boundary", "one-zero-block", "junk-after-end", "member-after-end"],
)
def test_end_of_archive_as_go_finds_it(tail: bytes) -> None:
    assert names(tar_member("f", b"abc") + tail) == [("f", "0", 512, 3)]


def test_a_blob_cut_in_the_last_padding_has_ended() -> None:
    assert names(tar_member("f", b"abc")[:600]) == [("f", "0", 512, 3)]


def test_empty_blob_is_an_empty_layer() -> None:
    assert entries(b"") == []


def test_go_sparse_member_is_marked_and_named_by_its_records() -> None:
    records = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"disk/s.img"),
               (b"GNU.sparse.realsize", b"4096")]
    [entry] = entries(pax_header(records) + tar_member("disk/GNUSparseFile.0/s.img", b"1\n0\n512\n") + TAR_END)
    assert (entry.name, entry.sparse, entry.size) == ("disk/s.img", True, 4096)


def test_cve_2024_6232_record_is_read_linearly() -> None:
    # Unpatched Python's tarfile spends quadratic time on such a header; Go, and cdisk, read it in one pass.
    raw = pax_header([(b"comment", b"1 " * 400_000)]) + tar_member("f", b"a") + TAR_END
    assert names(raw)[0][:2] == ("f", "0")
    refused(pax_header(b"1 " * 400_000) + tar_member("f") + TAR_END, "PAX record")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"g" + tar_member("f")[1:], "bad checksum"),
        (tar_member("f", b"x", fields={100: b"abcdefg\x00"}), "mode field is not a number"),
        (tar_member("f", b"x", fields={329: b"0009999\x00"}), "devmajor field is not a number"),
        (tar_member("f", fields={124: b"\xff" * 12}), "negative size"),
        (tar_member("f") + bytes(512) + tar_member("g"), "zero block followed by another header"),
        (pax_header(b"12 path=abcd") + tar_member("f"), "does not end with a newline"),
        (pax_header(b"+11 path=ab\n") + tar_member("f"), "not plain digits"),
        (pax_header(b"99 path=ab\n") + tar_member("f"), "does not fit"),
        (pax_header(b"9 =novar\n") + tar_member("f"), "without a key"),
        (pax_header(pax_record(b"path", b"a\x00b")) + tar_member("f"), "NUL byte"),
        (pax_header(pax_record(b"mtime", b"1.5x")) + tar_member("f"), "mtime that is not a time"),
        (pax_header(pax_record(b"uid", b"seven")) + tar_member("f"), "uid that is not a number"),
        (pax_header(pax_record(b"size", b"0x10")) + tar_member("f"), "size that is not a number"),
        (tar_header("PaxHeaders/f", b"x", (1 << 20) + 1), "larger than 1 MiB"),
        (pax_header(pax_record(b"a", b"b") * 4097) + tar_member("f"), "more than 4096 records"),
        (pax_header([(b"path", b"a")]) + pax_header([(b"mtime", b"1")]) + tar_member("f"), "two PAX headers"),
        (gnu_long(b"a") + gnu_long(b"b") + tar_member("f"), "two GNU long names"),
        (pax_header([(b"path", b"a")]) + gnu_long(b"b") + tar_member("f"), "PAX path and a GNU long name"),
        (gnu_long(b"b") + pax_header([(b"path", b"a")]) + tar_member("f"), "PAX path and a GNU long name"),
        (pax_header([(b"linkpath", b"a")]) + gnu_long(b"b", b"K") + tar_member("f", kind=b"2"),
         "PAX linkpath and a GNU long name"),
        (pax_header([(b"path", b"")]) + tar_member("f"), "empty PAX path"),
        (gnu_long(b"") + tar_member("f"), "empty GNU long name"),
        (pax_header([(b"path", b"a")]) + TAR_END, "followed by no member"),
        (gnu_long(b"a") + pax_header([(b"comment", b"x")], b"g"), "followed by a global header"),
        (pax_header([(b"path", b"disk/x")], b"g") + tar_member("f"), "global header with a path record"),
        (pax_header([(b"size", b"0")], b"g") + tar_member("f"), "global header with a size record"),
        (pax_header([(b"GNU.sparse.name", b"disk/zz")]) + tar_member("disk/x"), "GNU.sparse records"),
        (pax_header([(b"GNU.sparse.realsize", b"9")]) + tar_member("disk/x"), "GNU.sparse records"),
        (pax_header([(b"GNU.sparse.numbytes", b"9")]) + tar_member("disk/x"), "sparse map out of order"),
        (pax_header([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")]) + tar_member("d", kind=b"5"),
         "holds no data"),
        (tar_member("f", kind=b"S", **GNU), "old GNU sparse"),
        (tar_member("f", prefix=b"disk", **V7), "ustar name prefix"),
        (tar_member("f", prefix=b"14000000000\x00", **GNU), "ustar name prefix"),
        (tar_member("f", prefix=b"p" * 131, fields={508: b"tar\x00"}), "star header"),
        (pax_header([(b"path", b"d")]) + tar_member("d/", kind=b"\x00"), "disagree on being a directory"),
        (pax_header([(b"SCHILY.xattr.trusted.overlay.opaque", b"y")]) + tar_member("d", kind=b"5"), "overlayfs"),
        (pax_header([(b"SCHILY.xattr.user.overlay.whiteout", b"y")]) + tar_member("d"), "overlayfs"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_refused(raw: bytes, says: str) -> None:
    refused(raw + TAR_END, says)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (tar_member("f")[:300], "ends inside a header"),
        (tar_member("f") + bytes(512) + bytes(100), "ends inside a header"),
        (tar_header("f", size=5000) + bytes(2048), "ends inside a member's data"),
        (tar_header("PaxHeaders/f", b"x", 600) + bytes(512), "ends inside a PAX"),
    ],
)
def test_truncated_layer_is_refused(raw: bytes, says: str) -> None:
    refused(raw, says)


def test_refusal_is_one_line_with_what_to_do() -> None:
    with pytest.raises(LayerRefused) as caught:
        entries(tar_member("f", b"x", fields={100: b"abcdefg\x00"}) + TAR_END)
    assert caught.value.exit_code == 5 and caught.value.offset == 0
    assert "\n" not in caught.value.message and "; rebuild the image" in caught.value.message


@pytest.mark.parametrize(
    ("text", "value"),
    [(b"42", 42), (b"+42", 42), (b"-42", -42), (b"0042", 42), (b"9223372036854775807", (1 << 63) - 1),
     (b"9223372036854775808", None), (b"", None), (b"4_2", None), (b" 42", None), (b"0x2a", None)],
)
def test_go_int(text: bytes, value: int | None) -> None:
    assert go_int(text) == value


def test_pax_duplicates_keep_the_last_and_sparse_pairs_join() -> None:
    body = b"".join(
        pax_record(k, v)
        for k, v in [(b"path", b"a"), (b"path", b"b"), (b"GNU.sparse.offset", b"0"), (b"GNU.sparse.numbytes", b"5")]
    )
    assert parse_pax(body, 0) == {b"path": b"b", b"GNU.sparse.map": b"0,5"}


def test_tarfile_is_never_imported_to_read_layers() -> None:
    code = (
        "import sys, cdisk.core.oci.layout, cdisk.core.tree.merged, cdisk.core.tar_headers, cdisk.core.sources; "
        "print('tarfile' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("size", [5, 4096, (9 << 30) + 5])
@pytest.mark.parametrize("at", range(0, 8192, 512))
def test_the_headers_cdisk_build_writes_put_the_data_on_a_block(tmp_path: Path, at: int, size: int) -> None:
    """Wherever a member starts, `cdisk build`'s headers put its data on a 4 KiB block (a clone can share
    them), and both this reader and Python's see one member of the size written there."""
    from cdisk.core.commands.build.layer import member_headers

    headers = member_headers("disk/disk.img", 0o444, size, 0, 107, "qemu", at=at)
    assert (at + len(headers)) % 4096 == 0
    tar = tmp_path / "layer.tar"
    before = tar_member("disk/", kind=b"5") + tar_member("disk/before", bytes(at - 1024)) if at > 512 else \
        tar_member("disk/", kind=b"5")[:at]
    tar.write_bytes(before + headers)  # members filling `at` bytes, then the member (its data a hole)
    os.truncate(tar, at + len(headers) + -(-size // 512) * 512 + 1024)
    with open(tar, "rb") as f:
        found = list(read_entries(f, tar.stat().st_size))
    assert [(e.name, e.data_offset, e.size) for e in found][-1] == ("disk/disk.img", at + len(headers), size)
    with tarfile.open(fileobj=io.BytesIO(headers + bytes(512))) as python:
        member = python.next()
    assert member is not None
    assert (member.name, member.size, member.offset_data) == ("disk/disk.img", size, len(headers))
