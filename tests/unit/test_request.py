"""The write request checked before any pull: its format and -c, and -f typed as qemu-img's -f (pure)."""

from __future__ import annotations

import pytest

from cdisk.core.errors import UsageError
from cdisk.core.qemu.output_formats import FORMATS
from cdisk.core.request import WriteRequest, check_write

IMAGE = "quay.io/containerdisks/fedora:40"


def test_a_request_cdisk_can_write_gives_its_format() -> None:
    assert check_write(IMAGE, WriteRequest("vm.raw")) is FORMATS["raw"]
    assert check_write(IMAGE, WriteRequest("vm.vmdk", "vmdk", compressed=True, force=True)) is FORMATS["vmdk"]


@pytest.mark.parametrize(("write", "says"), [
    (WriteRequest("vm.img", "qcow3"), "-O qcow3: cdisk does not write that format (did you mean qcow2?)"),
    (WriteRequest("vm.img", "luks"), "-O luks: a LUKS target needs a passphrase"),
    (WriteRequest("vm.img", compressed=True), "-c: qemu-img cannot compress raw"),
    (WriteRequest("vm.img", "vhdx", compressed=True), "-c: qemu-img cannot compress vhdx"),
])
def test_what_qemu_img_would_fail_late_is_a_usage_error(write: WriteRequest, says: str) -> None:
    with pytest.raises(UsageError) as refused:
        check_write(IMAGE, write)
    assert refused.value.message.startswith(says)


def test_f_typed_for_a_format() -> None:
    # `cdisk convert -f qcow2 IMAGE`: IMAGE is qcow2 (and TARGET the image's name).
    with pytest.raises(UsageError) as as_image:
        check_write("qcow2", WriteRequest(IMAGE, force=True))
    assert as_image.value.message == (
        "IMAGE is 'qcow2', a format's name after -f, but cdisk's -f is --force (the disk's own format is read from "
        "the image; the output format is -O FMT); drop -f qcow2")
    # `cdisk convert IMAGE -f vmdk`: TARGET is vmdk.
    with pytest.raises(UsageError) as as_target:
        check_write(IMAGE, WriteRequest("vmdk", "vmdk", force=True))
    assert as_target.value.message.endswith("drop -f vmdk, or give ./vmdk for a file of that name")
    # Checked before the format: the -f slip is the cause, -O the symptom.
    with pytest.raises(UsageError) as slip:
        check_write("raw", WriteRequest(IMAGE, "qcow3", force=True))
    assert slip.value.message.startswith("IMAGE is 'raw'")


@pytest.mark.parametrize(("image", "target", "force"), [
    (IMAGE, "./qcow2", True),  # a file of that name, said so
    (IMAGE, "/vms/raw", True),
    (IMAGE, "qcow2", False),  # no -f typed: a file named qcow2 is what was asked
    (IMAGE, "vm.qcow2", True),
    ("localhost/qcow2", "vm.img", True),
])
def test_names_that_are_no_slip_of_f(image: str, target: str, force: bool) -> None:
    assert check_write(image, WriteRequest(target, force=force)) is FORMATS["raw"]
