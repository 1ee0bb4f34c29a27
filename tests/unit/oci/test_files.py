"""A blob of an image file is opened once, and what was opened is what is read."""

from __future__ import annotations

import os
from pathlib import Path

from cdisk.core.oci.files import DirectoryFiles
from cdisk.core.sources.tar_member import TarMember
from tests.images import one_disk_layout


def test_a_blob_swapped_after_it_was_opened_is_not_read(tmp_path: Path) -> None:
    layout, _, layer = one_disk_layout(tmp_path)
    original = layer.read_bytes()
    blob = DirectoryFiles(layout, "the layout", "fix it").blob(f"blobs/sha256/{layer.name}", "sha256:x")
    assert blob.fd is not None
    try:
        layer.unlink()
        layer.symlink_to("/etc/passwd")  # swapped once cdisk has looked
        member = TarMember("/disk/vm.img", str(blob.path), blob.offset, blob.size, (blob.fd,))
        assert member.read_at(0, len(original)) == original
    finally:
        os.close(blob.fd)
