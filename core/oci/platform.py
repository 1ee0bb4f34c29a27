"""Platforms as OCI names them (os/arch[/variant]): parsed from a switch or an index entry, told as text, and
this host's — one home for the engines, the layouts and build.
"""

from __future__ import annotations

import platform as host
import re
from dataclasses import dataclass

from cdisk.core.errors import UsageError

# uname's names for the architectures, as OCI platforms name them.
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "armv8l": "arm",
                  "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
_PLATFORM = re.compile(r"^([a-z0-9]+)/([a-z0-9_]+)(/[a-z0-9]+)?$")


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
    """OS/ARCH[/VARIANT] as OCI names it (x86_64 is amd64, aarch64 arm64).

    Raises:
        UsageError: not of that form.
    """
    match = _PLATFORM.match(text.strip().lower())
    if not match:
        raise UsageError(f"--platform {text[:100]!r} is not OS/ARCH[/VARIANT]; write e.g. linux/arm64")
    return f"{match[1]}/{architecture(match[2])}{match[3] or ''}"


def architecture(name: str) -> str:
    """An architecture as OCI names it."""
    return _ARCHITECTURES.get(name, name)


def host_platform() -> str:
    """This host's platform (linux/ARCH)."""
    return f"linux/{architecture(host.machine())}"


def platform_text(os_name: str, arch: str, variant: str = "") -> str:
    """os/arch[/variant] of an index entry's or a config's fields, the architecture as OCI names it."""
    return str(Platform(os_name, architecture(arch), variant))


def fits(have: str, wanted: str) -> bool:
    """Whether platform `have` serves `wanted`: os and architecture exactly, the variant when `wanted` names one."""
    have_parts, want_parts = have.split("/"), wanted.split("/")
    return have_parts[:2] == want_parts[:2] and (len(want_parts) < 3 or have_parts[2:3] == want_parts[2:3])
