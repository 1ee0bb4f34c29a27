"""`cdisk`: the entry point. Subcommands are imported only when named, so --help and --version stay quick; a
usage error of any command ends here as one line on stderr (exit 2). Nothing heavy is imported before `main()` has
started the sandbox probe of a command that needs one: plumbum and the command's modules load while bwrap works.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cdisk.cli.commands import COMMANDS  # noqa: F401 - the table, re-exported where it always was
from cdisk.core import signals

if TYPE_CHECKING:
    from cdisk.cli.top import CDisk as CDisk  # what `__getattr__` gives, for the type checker

# The commands whose qemu-img (or qemu-storage-daemon) runs in the sandbox.
SANDBOXED = frozenset({"convert", "ls", "verify", "refresh", "serve"})
_META = frozenset({"-h", "--help", "--help-all", "--version"})


def _probe_early(argv: Sequence[str]) -> None:
    """Start the sandbox probe (`core.qemu.sandbox.start_probe`) before the command's modules are imported, where
    the command line names a command that runs qemu-img: bwrap builds its namespaces (~10-40 ms) while Python
    imports the rest, instead of after. Only a guess from the words (a wrong one costs a probe reaped at exit);
    `--help` and `--version` start nothing."""
    words = argv[1:]
    if _META.isdisjoint(words) and next((w for w in words if not w.startswith("-")), None) in SANDBOXED:
        from cdisk.core.qemu import sandbox

        sandbox.start_probe()


class _Deferred(types.ModuleType):
    """A stand-in for a standard module that plumbum imports at its start and cdisk's runs do not use: the module
    itself is imported where one of its names is first asked for (by whoever asks), and replaces the stand-in."""

    def __getattr__(self, attr: str) -> Any:
        import importlib

        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        if parent and getattr(sys.modules[parent], child, None) is self:
            setattr(sys.modules[parent], child, real)
        return getattr(real, attr)


# plumbum's path module imports `urllib.request` (with http.client, email and ssl: ~10-20 ms, a tenth of a small
# convert) for one method cdisk never calls (`LocalPath.as_uri`), its daemons module `pickle`. The podman and docker
# API clients use urllib.request: the stand-in hands them the real module.
_DEFERRED = ("urllib.request", "pickle")


def _defer_unused_modules() -> None:
    for name in _DEFERRED:
        if name not in sys.modules:
            parent, _, child = name.rpartition(".")
            stand_in = _Deferred(name)
            if parent:
                __import__(parent)
                setattr(sys.modules[parent], child, stand_in)
            sys.modules[name] = stand_in


def _no_uname_child() -> None:
    """plumbum reads `platform.uname()[0]` as it loads, and indexing uname's result (Python >= 3.9) fills its
    `processor` field by running `uname -p`: a fork and exec of a child, 3-10 ms of every run, for a field nothing
    in cdisk reads. The field is filled first (with the machine, as `uname -p` says on most hosts; Debian's says
    `unknown`), so the child is not run; the other fields stay the kernel's own (os.uname). A Python whose uname
    result keeps no such cache simply runs the child."""
    import contextlib
    import os
    import platform

    with contextlib.suppress(AttributeError, TypeError):
        platform.uname().__dict__.setdefault("processor", os.uname().machine)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: `argv` as sys.argv has it (the program first). Run as the process itself (no
    `argv`), the process ends here once the atexit handlers ran (`_exit`)."""
    signals.stop_on_signals()
    _probe_early(sys.argv if argv is None else argv)
    _defer_unused_modules()
    _no_uname_child()
    from cdisk.cli.top import CDisk
    from cdisk.core.errors import UsageError

    try:
        try:
            CDisk.run(list(argv) if argv is not None else None)
        except UsageError as error:
            from cdisk.cli.output import error_line

            if "cdisk.core.qemu.sandbox" in sys.modules:  # a probe started on a guess from the words: not needed
                sys.modules["cdisk.core.qemu.sandbox"].reap_probe()
            error_line(error.message)
            sys.exit(error.exit_code)
    except SystemExit as done:
        if argv is not None:
            raise
        _exit(done.code)


def _exit(code: object) -> None:
    """End the process as the interpreter would (non-daemon threads joined, atexit handlers run, stdout and stderr
    flushed, the exit status `sys.exit` gives `code`), without tearing down every module first: the interpreter's
    own finalization of plumbum's and cdisk's ~300 modules costs ~10-40 ms, once everything is said and closed."""
    import atexit
    import os
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    # What the interpreter's own exit does first: its shutdown hooks (they wake an idle ThreadPoolExecutor's
    # workers, which a bare join would wait on for ever), then every non-daemon thread joined.
    from cdisk.core.errors import Interrupted

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Interrupted as stopped:  # a signal during the wait: the run ends as that signal says, without a trace
        status = 128 + stopped.signum
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # what the interpreter's own exit says when it cannot flush
    os._exit(status & 0xFF)


def __getattr__(name: str) -> Any:
    """`CDisk`, imported from `cli.top` when asked for (completions, tests): importing this module stays light."""
    if name == "CDisk":
        from cdisk.cli.top import CDisk

        return CDisk
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
