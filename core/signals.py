"""This process stopped by a signal as cleanly as by Ctrl-C: cdisk and its child in a user namespace alike.

A leaf of its own, so that the CLI installs it at start without importing anything heavy.
"""

from __future__ import annotations

import signal
from types import FrameType

from cdisk.core.errors import Interrupted

# SIGHUP: the terminal or the ssh session went away; cleaning up is as due as after Ctrl-C.
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Cleanup must not be cut short by a second Ctrl-C or a repeated SIGTERM.
    for stopping in STOPPING_SIGNALS:
        signal.signal(stopping, signal.SIG_IGN)
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` (once: cleanup then runs undisturbed), so that every
    context manager unwinds as after Ctrl-C; cdisk and its child in a user namespace alike (the child writes
    the target too)."""
    for stopping in STOPPING_SIGNALS:
        signal.signal(stopping, _interrupt)
    # A file longer than RLIMIT_FSIZE must fail with EFBIG, which is reported, not kill us with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
