"""The one error hierarchy of cdisk, and every exit code it documents. Each class carries its exit code; the
codes that are not errors (a verify that found a difference) are named here too.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: an exception no class here describes
EXIT_DIFFERENT = 8  # verify: TARGET differs from the image's disk, or (no TARGET) the image from what it says
EXIT_NOT_CHECKED = 10  # refresh: no registry answered whether the tag moved; TARGET stands, from the local image


class CdiskError(Exception):
    """An error a user can act on: the message says what is wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CdiskError):
    """A switch or argument is wrong (exit 2, as for plumbum's own usage errors)."""

    exit_code = 2


class BadValue(UsageError):
    """A switch's or an argument's value its type refused (exit 2): worded again by the CLI, which knows the
    command and the switch's shown name."""

    def __init__(self, name: str, value: str, wanted: str) -> None:
        super().__init__(f"{name} {value!r}: {wanted}")
        self.name, self.value, self.wanted = name, value, wanted


class DiskChanged(UsageError):
    """`cdisk build`: DISK is not the size it was when the build started: something writes to it (exit 2)."""

    def __init__(self, now: int, was: int) -> None:
        super().__init__(f"DISK changed while being read (it is {now} bytes, it was {was}); build it again "
                         "once nothing writes to it")


class ImageError(CdiskError):
    """The image cannot be found, pulled or read (exit 3)."""

    exit_code = 3


class ImageRemoved(ImageError):
    """The image was removed or replaced in its engine's store (another job's rmi or prune) while cdisk read it
    (exit 3): the next run reads it again, or finds it gone."""

    def __init__(self, engine: str, reference: str) -> None:
        super().__init__(f"{reference} was removed or replaced in {engine}'s store while cdisk read it (an rmi or "
                         "prune by another job?); run cdisk again")


class NoManifest(ImageError):
    """Saved image files hold no manifest for the image asked for (exit 3); of an engine's own save just made,
    the image was removed or replaced while it saved."""


class PullFailed(ImageError):
    """An engine could not pull `reference`: `reason` is the registry's answer cut to its cause (exit 3). The
    engine's message stands alone; `engines.choice` words it again with what the stores looked in hold.
    """

    def __init__(self, reference: str, engine: str, reason: str, advice: str) -> None:
        super().__init__(f"cannot pull {reference}: {reason}; {advice}")
        self.reference = reference
        self.engine = engine
        self.reason = reason


class DiskNotFoundError(CdiskError):
    """The image holds no disk, several, or not the one asked for (exit 4)."""

    exit_code = 4


class UnsafeImageError(CdiskError):
    """The image is refused: qemu-img could read outside it, or it cannot be read in place (exit 5)."""

    exit_code = 5


class LayerRefused(UnsafeImageError):
    """A layer cdisk will not read: Go would reject it, or tar readers could read it differently."""

    ADVICE = "rebuild the image with podman build, buildah or docker, or pull it again"

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at byte {offset} of a layer; {self.ADVICE}")
        self.what = what
        self.offset = offset


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


class LayerDirsUnusable(CdiskError):
    """The engine's store cannot be read as layer directories (another driver, unreadable directories, an
    overlay feature cdisk does not follow): the mount method reads it instead (exit 7 when layers were asked).
    """

    exit_code = 7

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot read the image from its layer directories: {why}; use --method save (or mount, "
                         "with podman)")
        self.why = why


class LimitExceeded(ToolError):
    """A child ran past its wall-clock deadline or printed more than its stdout bound; it was stopped.

    `what` says which limit, e.g. "ran longer than 120 s". `finished`: where children ran together, the
    (exit code, stdout, stderr tail) of those read to their end before this one, in order.
    """

    def __init__(self, what: str, argv: Sequence[str], stderr: str = "") -> None:
        name = argv[0].rsplit("/", 1)[-1] if argv else "a child process"
        super().__init__(f"{name} {what} and was stopped", argv, None, stderr)
        self.what = what
        self.finished: list[tuple[int, str, str]] = []


class UserNamespaceUnavailable(ToolError):
    """The engine could not start cdisk's child in its user namespace (no subordinate ids, no user
    namespaces); `reason` is the engine's own last word.
    """

    def __init__(self, reason: str, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        super().__init__(f"{reason}; use --method save", argv, returncode, stderr)
        self.reason = reason


class ChildCrashed(ToolError):
    """cdisk's child in the user namespace started, then died without reporting a CdiskError: a bug."""

    exit_code = EXIT_INTERNAL


class ChildError(CdiskError):
    """An error cdisk's child in the user namespace reported, with the exit code it carried."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BusyError(CdiskError):
    """Another refresh of the same target holds its lock, and --no-wait was given (exit 9)."""

    exit_code = 9


class Interrupted(BaseException):
    """Raised by the signal handlers for SIGINT, SIGTERM and SIGHUP so that every `finally` runs.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TooManyEntries(Exception):
    """A directory holds more entries than the `limit` its listing was given: none of them was looked at. The
    search for disks outside /disk/ ends there and says so; it never reaches the user as an error."""


class Denied(Exception):
    """`verify IMAGE`: a file of a layer this process may not read (a rootless store's file owned by a subordinate
    id): no finding on the layer, a question of who reads it; worded by the command."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(name, why)
        self.name, self.why = name, why
