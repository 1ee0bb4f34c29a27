"""Platforms as OCI names them (os/arch[/variant]): parsed from a switch or an index entry, told as text, and
this host's — one home for the engines, the layouts and build.
"""

from __future__ import annotations

import platform as host
import re
from dataclasses import dataclass

from cdisk.core.errors import UsageError

# uname's and distributions' names for the architectures, as OCI platforms name them (containerd's
# `normalizeArch`, and uname's own).
_ARCHITECTURES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
                  "armv8l": "arm", "armhf": "arm", "armel": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
                  "s390x": "s390x"}
# The variant a distribution's architecture name implies (containerd: armhf is arm/v7, armel arm/v6).
_IMPLIED_VARIANTS = {"armhf": "v7", "armel": "v6"}
# Go's GOOS and GOARCH lists (go/build/syslist.go), which containerd's platforms package and podman accept.
KNOWN_OS = frozenset(("aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
                      "nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos"))
KNOWN_ARCHITECTURES = frozenset((
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips", "mipsle", "mips64",
    "mips64le", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv", "riscv64", "s390", "s390x", "sparc",
    "sparc64", "wasm"))
# The variants an architecture has (amd64: GOAMD64's levels; arm: GOARM; arm64: the Arm versions containerd's
# matcher orders), each with the default a platform without one means (containerd leaves it out).
VARIANTS = {
    "amd64": ("v1", "v2", "v3", "v4"),
    "arm": ("v5", "v6", "v7", "v8"),
    "arm64": ("v8", *(f"v8.{n}" for n in range(10)), "v9", *(f"v9.{n}" for n in range(8))),
}
_VARIANTS_SHOWN = {"arm64": "v8, v8.0-v8.9, v9, v9.0-v9.7"}
DEFAULT_VARIANTS = {"amd64": "v1", "arm": "v7", "arm64": "v8"}
_PLATFORM = re.compile(r"^([a-z0-9_-]+)/([a-z0-9_-]+)(?:/([a-z0-9._-]+))?$")


@dataclass(frozen=True)
class Platform:
    """One platform: `os`, `architecture` as OCI names it, and a `variant` or ""."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """OS/ARCH[/VARIANT] as `normal_platform` writes it."""
        os_name, arch, *variant = normal_platform(text).split("/")
        return cls(os_name, arch, variant[0] if variant else "")

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def normal_platform(text: str) -> str:
    """OS/ARCH[/VARIANT] as OCI names it (x86_64 is amd64, aarch64 arm64, armhf arm/v7; a variant written as a
    bare number gets its v), checked against Go's lists of operating systems and architectures and the variants
    each architecture has.

    Raises:
        UsageError: not of that form, or an OS, architecture or variant that does not exist.
    """
    match = _PLATFORM.match(text.strip().lower())
    if not match:
        raise UsageError(f"--platform {text[:100]!r} is not OS/ARCH[/VARIANT]; write e.g. linux/arm64")
    os_name, written, variant = match[1], match[2], match[3] or ""
    os_name = "darwin" if os_name == "macos" else os_name
    arch = architecture(written)
    if os_name not in KNOWN_OS:
        raise UsageError(f"--platform {text.strip()[:100]!r}: {os_name[:40]!r} is no operating system Go knows; "
                         "write e.g. linux/arm64 (the OS as GOOS names it)")
    if arch not in KNOWN_ARCHITECTURES:
        raise UsageError(f"--platform {text.strip()[:100]!r}: {written[:40]!r} is no architecture Go knows; "
                         "write e.g. linux/arm64 (the architecture as GOARCH names it: amd64, arm64, arm, 386, "
                         "ppc64le, s390x, riscv64, …)")
    implied = _IMPLIED_VARIANTS.get(written, "")
    if variant:
        variant = f"v{variant}" if variant[:1].isdigit() else variant
        known = VARIANTS.get(arch, ())
        if not known:
            raise UsageError(f"--platform {text.strip()[:100]!r}: {arch} has no variants; leave the variant out "
                             f"({os_name}/{arch})")
        if variant not in known:
            raise UsageError(f"--platform {text.strip()[:100]!r}: {arch} has no variant {variant[:40]} (it has "
                             f"{_VARIANTS_SHOWN.get(arch, ', '.join(known))}); name one of those, or leave the variant "
                             f"out ({os_name}/{arch})")
        if implied and variant != implied:
            raise UsageError(f"--platform {text.strip()[:100]!r}: {written} is {arch}/{implied}, not "
                             f"{arch}/{variant}; write {os_name}/{arch}/{variant}")
    return f"{os_name}/{arch}" + (f"/{variant or implied}" if variant or implied else "")


def architecture(name: str) -> str:
    """An architecture as OCI names it."""
    return _ARCHITECTURES.get(name, name)


def same_variant(arch: str, have: str, wanted: str) -> bool:
    """Whether two variants of `arch` are the same one, a missing variant being the architecture's default (as
    containerd's matcher normalises them: arm64 is arm64/v8, amd64 amd64/v1, arm arm/v7)."""
    default = DEFAULT_VARIANTS.get(arch, "")
    return (have or default) == (wanted or default)


def host_platform() -> str:
    """This host's platform (linux/ARCH)."""
    return f"linux/{architecture(host.machine())}"


def platform_text(os_name: str, arch: str, variant: str = "") -> str:
    """os/arch[/variant] of an index entry's or a config's fields, the architecture as OCI names it."""
    return str(Platform(os_name, architecture(arch), variant))


def fits(have: str, wanted: str) -> bool:
    """Whether platform `have` serves `wanted`: os and architecture exactly, the variant when `wanted` names one
    (an architecture's default variant and none are the same: `same_variant`)."""
    have_parts, want_parts = have.split("/"), wanted.split("/")
    if have_parts[:2] != want_parts[:2]:
        return False
    return len(want_parts) < 3 or same_variant(want_parts[1], "".join(have_parts[2:3]), want_parts[2])
