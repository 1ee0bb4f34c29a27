"""Fakes of qemu-img for a real cdisk: to see every qemu-img run, to act on the host meanwhile, or to inject
a fault that cannot be staged for real (a full disk, a hang, a crawl, a kill).

cdisk runs qemu-img inside bubblewrap, where only /usr is there: a fake `qemu-img` first on PATH would not
be found in the sandbox. So a fake `bwrap` stands beside it. Both run outside any sandbox: they log the
subcommand, run the test's hook for it (which may end the run itself), then exec the real qemu-img —
through the real bwrap with the real qemu-img in the fake's place when cdisk asked for the sandbox.
In a hook, `args` are qemu-img's arguments (the subcommand first), `target` the last of them (the file
convert writes) and `real` the real qemu-img.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_FAKE = """#!{python}
import os, subprocess, sys, time
REAL_QEMU_IMG, REAL_BWRAP, LOG, HOOKS = {real_qemu_img!r}, {real_bwrap!r}, {log!r}, {hooks!r}
args, sandbox = sys.argv[1:], None
if os.path.basename(sys.argv[0]) == "bwrap":
    program = args.index("--") + 1 if "--" in args else None
    if program is None or os.path.basename(args[program]) != "qemu-img":
        os.execv(REAL_BWRAP, [REAL_BWRAP, *args])
    sandbox, args = args[:program], args[program + 1:]
subcommand = args[0] if args else ""
with open(LOG, "a") as log:
    log.write(subcommand + "\\n")
real, target = REAL_QEMU_IMG, args[-1] if args else ""
exec(HOOKS.get(subcommand, ""))
if sandbox is None:
    os.execv(REAL_QEMU_IMG, [REAL_QEMU_IMG, *args])
os.execv(REAL_BWRAP, [REAL_BWRAP, *sandbox, REAL_QEMU_IMG, *args])
"""


class QemuImgFakes:
    """Fakes in `bin_dir` that log each qemu-img subcommand and run `hooks[subcommand]` (Python) before it;
    `env` puts them first on PATH.
    """

    def __init__(self, bin_dir: Path, hooks: dict[str, str] | None = None) -> None:
        real_qemu_img, real_bwrap = shutil.which("qemu-img"), shutil.which("bwrap")
        assert real_qemu_img and real_bwrap, "qemu-img or bwrap is missing: run scripts/test"
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.log = bin_dir / "qemu-img.log"
        self.log.touch()
        text = _FAKE.format(python=sys.executable, real_qemu_img=real_qemu_img, real_bwrap=real_bwrap,
                            log=str(self.log), hooks=hooks or {})
        for name in ("qemu-img", "bwrap"):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def subcommands(self) -> list[str]:
        """The qemu-img subcommands run so far, in order (info, check, convert, …)."""
        return self.log.read_text().splitlines()


def faulty_convert(bin_dir: Path, convert_body: str) -> dict[str, str]:
    """Fakes whose `qemu-img convert` is `convert_body` (it must end the run); the env that puts them first."""
    return QemuImgFakes(bin_dir, {"convert": convert_body}).env
