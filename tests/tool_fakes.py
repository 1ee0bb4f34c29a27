"""A way to see (and act on) every qemu-img run of a real cdisk, whether qemu-img runs bare or in its sandbox.

A fake `qemu-img` first on PATH cannot simply exec the real one: inside the bubblewrap sandbox only /usr is
there, so cdisk's `bwrap … -- /tmp/…/qemu-img` would find nothing. So a fake `bwrap` is put beside it: it
records the qemu-img run and swaps the fake's path for the real qemu-img before it execs the real bwrap.
Both record outside any sandbox, so they can also act on the host (remove an image, say).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_FAKE = """#!{python}
import os, subprocess, sys
REAL_QEMU_IMG, REAL_BWRAP, LOG, ON_CONVERT = {real_qemu_img!r}, {real_bwrap!r}, {log!r}, {on_convert!r}
args = sys.argv[1:]

def seen(subcommand):
    with open(LOG, "a") as log:
        log.write(subcommand + "\\n")
    if subcommand == "convert" and ON_CONVERT:
        subprocess.run(ON_CONVERT, capture_output=True)

if os.path.basename(sys.argv[0]) == "qemu-img":
    seen(args[0] if args else "")
    os.execv(REAL_QEMU_IMG, [REAL_QEMU_IMG, *args])
if "--" in args:
    program = args.index("--") + 1
    if os.path.basename(args[program]) == "qemu-img":
        args[program] = REAL_QEMU_IMG
        seen(args[program + 1] if len(args) > program + 1 else "")
os.execv(REAL_BWRAP, [REAL_BWRAP, *args])
"""


class QemuImgRuns:
    """Fakes in `bin_dir` that log each qemu-img subcommand run; `env` puts them first on PATH."""

    def __init__(self, bin_dir: Path, on_convert: list[str] | None = None) -> None:
        real_qemu_img, real_bwrap = shutil.which("qemu-img"), shutil.which("bwrap")
        assert real_qemu_img, "qemu-img is missing: run scripts/test"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.log = bin_dir / "qemu-img.log"
        self.log.touch()
        text = _FAKE.format(python=sys.executable, real_qemu_img=real_qemu_img, real_bwrap=real_bwrap or "",
                            log=str(self.log), on_convert=on_convert or [])
        for name in ("qemu-img", "bwrap") if real_bwrap else ("qemu-img",):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def subcommands(self) -> list[str]:
        """The qemu-img subcommands run so far, in order (info, check, convert, …)."""
        return self.log.read_text().splitlines()
