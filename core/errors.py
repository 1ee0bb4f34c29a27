"""The one error hierarchy of cdisk. Each class carries its documented exit code."""

from __future__ import annotations

from collections.abc import Sequence


class CdiskError(Exception):
    """An error a user can act on: the message says what is wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CdiskError):
    """A switch or argument is wrong (exit 2, as for plumbum's own usage errors)."""

    exit_code = 2


class ImageError(CdiskError):
    """The image cannot be found, pulled or read (exit 3)."""

    exit_code = 3


class DiskNotFoundError(CdiskError):
    """The image holds no disk, several, or not the one asked for (exit 4)."""

    exit_code = 4


class UnsafeImageError(CdiskError):
    """The image is refused: qemu-img could read outside it, or it cannot be read in place (exit 5)."""

    exit_code = 5


class TargetError(CdiskError):
    """The target cannot be written: exists, too small, no space, wrong kind (exit 6)."""

    exit_code = 6


class ToolError(CdiskError):
    """An external tool (podman, qemu-img) failed or is missing (exit 7). Keeps argv, exit code, stderr."""

    exit_code = 7

    def __init__(self, message: str, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class Interrupted(BaseException):
    """Raised by the signal handlers for SIGINT and SIGTERM so that every `finally` runs.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
