"""The engine seam: what cdisk needs of a container engine (`Engine`), and what an engine says of an image
(`Image`). Nothing outside `engines/` asks which engine it holds: it asks the seam's attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from cdisk.core.progress import Progress
from cdisk.core.request import ImageRequest

if TYPE_CHECKING:  # LayerBlob's module only for a run that saves: start-up stays cheap
    from cdisk.core.oci.blob import LayerBlob

# In the order `--engine auto` asks them.
NAMES = ("podman", "docker")
# Image files, read by the `file` engine whatever --engine says.
FILE_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")
AUTO = "auto"


@dataclass(frozen=True)
class Image:
    """An image in an engine's local store, as the engine inspects it.

    `layer_dirs` are where its layers lie on this host, top first, when the store keeps them as plain
    directories (overlay); `store` names the store's driver; `engine` the engine whose store it is.
    """

    reference: str
    id: str
    digest: str
    architecture: str
    size: int
    layers: tuple[str, ...]
    store: str = ""
    layer_dirs: tuple[str, ...] = ()
    engine: str = "podman"
    platform: str = ""  # the platform asked for (--platform), "" for this host's
    disktype: str = ""  # the disk type asked for among podman machine's disk artifacts (--disktype), "": qemu
    os: str = ""  # the image's own OS and variant, as its config says ("" where it says none)
    variant: str = ""
    digests: tuple[str, ...] = ()  # every manifest digest the store knows it by (its own, its repositories')

    @property
    def source(self) -> str:
        """What kind of source it came from: an engine's store (podman, docker) or a file's transport (oci,
        oci-archive, docker-archive)."""
        return self.reference.partition(":")[0] if self.engine == "file" else self.engine


class Engine(Protocol):
    """What cdisk needs of a container engine."""

    name: str
    # Whether the engine can mount an image (docker cannot: no `image mount`).
    mounts: bool
    # Whether `save` copies the layers into a temp dir (image files are read where they lie).
    copies: bool
    # Whether images live in a store of the engine's own (podman, docker): image files have none (no layer
    # directories, nothing pulled); they are named by their path.
    stores: bool
    # The one line for an operator who asks this engine to mount ("" where it mounts).
    cannot_mount: str

    def available(self) -> bool:
        """Whether the engine is installed and its store can be asked here (cheap: no import, no API call
        beyond a ping).

        Raises:
            ImageError: the engine is pointed at a store cdisk refuses to read (a remote CONTAINER_HOST or
            DOCKER_HOST), whether or not it is installed; `--engine auto` then asks the next one.
        """

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        """The image in the local store, or None; never pulls."""

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        """The image in the local store, pulled first as `request.pull` says.

        Raises:
            ImageError: absent and not to be pulled, or the pull failed.
            ToolError: the engine failed or stopped answering.
        """

    def mount(self, image: Image) -> AbstractContextManager[str]:
        """The image's root filesystem, mounted while the block runs; its path on this host."""

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        """The image's layers, lowest first: saved uncompressed into the private dir `workdir` by an engine that
        `copies`; held open where they lie (compressed or not) by one that does not (image files, `workdir` None).
        """

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        """`argv` running in the engine's rootless user namespace (as `podman unshare`): the child process,
        stopped and reaped when the block ends.
        """

    def load(self, archive: Path) -> None:
        """Load the docker-archive `archive` into the engine's store (the archive names the image)."""

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        """Push the image `source` names (in the engine's store; for image files TRANSPORT:PATH[:NAME]) to the
        registry as `ref`; `tls_verify` None leaves it to the engine's configuration."""
