"""Container engines: the local image stores cdisk reads disks from. This is the seam; each engine is one module
of this package (podman today), and nothing outside it runs an engine's tool or talks to its API.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, Protocol

from cdisk.core.job import ImageRequest
from cdisk.core.progress import Progress


@dataclass(frozen=True)
class Image:
    """An image in an engine's local store, as the engine inspects it.

    `layer_dirs` are where its layers lie on this host, top first, when the store keeps them as plain
    directories (overlay); `store` names the store's driver.
    """

    reference: str
    id: str
    digest: str
    architecture: str
    size: int
    layers: tuple[str, ...]
    store: str = ""
    layer_dirs: tuple[str, ...] = ()


class Engine(Protocol):
    """What cdisk needs of a container engine."""

    name: str

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        """The image in the local store, pulled first as `request.pull` says.

        Raises:
            ImageError: absent and not to be pulled, or the pull failed.
            ToolError: the engine failed or stopped answering.
        """

    def mount(self, image: Image) -> AbstractContextManager[str]:
        """The image's root filesystem, mounted while the block runs; its path on this host."""

    def save(self, image: Image, destination: str) -> None:
        """The image's layers, uncompressed, as an OCI layout written to `destination` (which must not exist)."""

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        """`argv` running in the engine's rootless user namespace (as `podman unshare`): the child process,
        stopped and reaped when the block ends.
        """


def local() -> Engine:
    """The engine whose store holds the images on this host (podman; docker comes next)."""
    from cdisk.core.engines.podman import PODMAN

    return PODMAN
