"""Platforms as OCI names them: parsed from --platform or an index entry, told as text, matched, and this host's
(pure).
"""

from __future__ import annotations

import os

import pytest

from cdisk.core.errors import UsageError
from cdisk.core.oci.platform import Platform, architecture, fits, host_platform, normal_platform, platform_text


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("Linux/AArch64", "linux/arm64"),
        ("  linux/arm64  ", "linux/arm64"),
        ("linux/armv7l/v7", "linux/arm/v7"),
        ("linux/arm/v7", "linux/arm/v7"),
        ("linux/i686", "linux/386"),
        ("linux/riscv64", "linux/riscv64"),
        ("windows/amd64", "windows/amd64"),
        # containerd's normalisation: a bare number is a variant with its v, armhf and armel name their variant.
        ("linux/arm64/8", "linux/arm64/v8"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/x86-64/v3", "linux/amd64/v3"),
        ("linux/i386", "linux/386"),
        ("macos/arm64", "darwin/arm64"),
        ("linux/arm64/v8.2", "linux/arm64/v8.2"),
        ("linux/arm64/v9", "linux/arm64/v9"),
        ("linux/amd64/v4", "linux/amd64/v4"),
        ("linux/arm/v5", "linux/arm/v5"),
    ],
)
def test_normal_platform_names_the_architecture_as_oci_does(text: str, normal: str) -> None:
    assert normal_platform(text) == normal


@pytest.mark.parametrize("text", ["arm64", "linux/", "/arm64", "linux/arm64/", "linux/arm/v7/extra", "linux arm64",
                                  "linux/arm 64", "linux/arm64/v 8", ""])
def test_normal_platform_refuses_what_is_not_os_arch_variant(text: str) -> None:
    with pytest.raises(UsageError) as refused:
        normal_platform(text)
    assert refused.value.message == f"--platform {text!r} is not OS/ARCH[/VARIANT]; write e.g. linux/arm64"
    assert refused.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("linux/amd64/v9", "--platform 'linux/amd64/v9': amd64 has no variant v9 (it has v1, v2, v3, v4); name one of "
                           "those, or leave the variant out (linux/amd64)"),
        ("linux/arm64/v7", "--platform 'linux/arm64/v7': arm64 has no variant v7 (it has v8, v8.0-v8.9, v9, "
                           "v9.0-v9.7); name one of those, or leave the variant out (linux/arm64)"),
        ("linux/arm/v9", "--platform 'linux/arm/v9': arm has no variant v9 (it has v5, v6, v7, v8); name one of "
                         "those, or leave the variant out (linux/arm)"),
        ("linux/386/v1", "--platform 'linux/386/v1': 386 has no variants; leave the variant out (linux/386)"),
        ("linux/armhf/v6", "--platform 'linux/armhf/v6': armhf is arm/v7, not arm/v6; write linux/arm/v6"),
        ("linux/amd65", "--platform 'linux/amd65': 'amd65' is no architecture Go knows; write e.g. linux/arm64 (the "
                        "architecture as GOARCH names it: amd64, arm64, arm, 386, ppc64le, s390x, riscv64, …)"),
        ("linux/arm-64", "--platform 'linux/arm-64': 'arm-64' is no architecture Go knows; write e.g. linux/arm64 "
                         "(the architecture as GOARCH names it: amd64, arm64, arm, 386, ppc64le, s390x, riscv64, …)"),
        ("linus/amd64", "--platform 'linus/amd64': 'linus' is no operating system Go knows; write e.g. linux/arm64 "
                        "(the OS as GOOS names it)"),
    ],
)
def test_normal_platform_refuses_what_does_not_exist(text: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        normal_platform(text)
    assert refused.value.message == message
    assert refused.value.exit_code == 2


def test_a_refused_platform_is_shown_cut_at_100_characters() -> None:
    text = "x" * 300
    with pytest.raises(UsageError) as refused:
        normal_platform(text)
    assert refused.value.message == f"--platform {'x' * 100!r} is not OS/ARCH[/VARIANT]; write e.g. linux/arm64"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("linux/amd64", Platform("linux", "amd64", "")),
        ("linux/aarch64/v8", Platform("linux", "arm64", "v8")),
        ("LINUX/X86_64", Platform("linux", "amd64", "")),
    ],
)
def test_parse_splits_the_normal_form(text: str, parsed: Platform) -> None:
    assert Platform.parse(text) == parsed


def test_parse_refuses_as_normal_platform_does() -> None:
    with pytest.raises(UsageError, match=r"^--platform 'amd64' is not OS/ARCH\[/VARIANT\]"):
        Platform.parse("amd64")


@pytest.mark.parametrize(
    ("platform", "text"),
    [
        (Platform(), "linux/amd64"),
        (Platform("linux", "arm64"), "linux/arm64"),
        (Platform("linux", "arm", "v7"), "linux/arm/v7"),
    ],
)
def test_str_leaves_out_an_empty_variant(platform: Platform, text: str) -> None:
    assert str(platform) == text
    assert Platform.parse(text) == platform


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        (("linux", "x86_64"), "linux/amd64"),
        (("linux", "aarch64", "v8"), "linux/arm64/v8"),
        (("linux", "arm64", ""), "linux/arm64"),
        (("linux", "s390x"), "linux/s390x"),
        (("?", "?"), "?/?"),
    ],
)
def test_platform_text_of_an_index_entrys_fields(fields: tuple[str, ...], text: str) -> None:
    assert platform_text(*fields) == text


@pytest.mark.parametrize(
    ("name", "oci"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "arm"), ("armv6l", "arm"), ("armv8l", "arm"),
     ("i686", "386"), ("ppc64le", "ppc64le"), ("s390x", "s390x"), ("amd64", "amd64"), ("mips64", "mips64")],
)
def test_architecture_maps_unames_names(name: str, oci: str) -> None:
    assert architecture(name) == oci


@pytest.mark.parametrize(
    ("have", "wanted", "serves"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/arm64/v8", "linux/arm64", True),  # no variant asked: any will do
        ("linux/arm/v7", "linux/arm/v7", True),
        ("linux/arm64", "linux/arm64/v8", True),  # none is the default variant (containerd: arm64 is arm64/v8)
        ("linux/amd64", "linux/amd64/v1", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/arm64", "linux/arm64/v9", False),  # a variant asked: it must be there
        ("linux/amd64/v3", "linux/amd64/v2", False),
        ("linux/ppc64le", "linux/ppc64le/power9", False),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "linux/arm64", False),
        ("windows/amd64", "linux/amd64", False),
        ("linux/amd64/v2", "linux/amd64/v2", True),
    ],
)
def test_fits(have: str, wanted: str, serves: bool) -> None:
    assert fits(have, wanted) is serves


def test_host_platform_is_linux_and_this_machines_architecture() -> None:
    machine = os.uname().machine
    expected = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(machine)
    if expected is None:
        pytest.skip(f"no expected value written for a {machine} host")
    assert host_platform() == expected
