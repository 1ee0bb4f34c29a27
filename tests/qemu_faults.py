"""A `qemu-img convert` with a fault in it (a full disk, a hang, a crawl), every other subcommand real.

Fault injection for what cannot be staged for real. cdisk may run qemu-img bare or inside bubblewrap,
where only /usr is there and a fake on PATH would not be found; so a fake `bwrap` sits beside the fake
`qemu-img`: it runs the faulty convert itself (outside any sandbox, where the fake can reach the target
file), and hands every other run to the real bwrap with the real qemu-img in the fake's place.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_SCRIPT = """#!{python}
import os, sys, time
REAL_QEMU_IMG, REAL_BWRAP = {real_qemu_img!r}, {real_bwrap!r}
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "bwrap":
    program = args.index("--") + 1 if "--" in args else None
    if program is None or os.path.basename(args[program]) != "qemu-img":
        os.execv(REAL_BWRAP, [REAL_BWRAP, *args])
    if args[program + 1:program + 2] != ["convert"]:
        args[program] = REAL_QEMU_IMG
        os.execv(REAL_BWRAP, [REAL_BWRAP, *args])
    args = args[program + 1:]
if args[:1] != ["convert"]:
    os.execv(REAL_QEMU_IMG, [REAL_QEMU_IMG, *args])
real, target = REAL_QEMU_IMG, args[-1]
{convert_body}
"""


def faulty_convert(bin_dir: Path, convert_body: str) -> dict[str, str]:
    """Put the fakes in `bin_dir`; the env that puts them first on PATH.

    `convert_body` is Python run in place of `qemu-img convert`, with `args` (convert's arguments, the
    subcommand first), `target` (the file it writes) and `real` (the real qemu-img) defined.
    """
    real_qemu_img, real_bwrap = shutil.which("qemu-img"), shutil.which("bwrap")
    assert real_qemu_img, "qemu-img is missing: run scripts/test"
    bin_dir.mkdir(parents=True, exist_ok=True)
    text = _SCRIPT.format(python=sys.executable, real_qemu_img=real_qemu_img, real_bwrap=real_bwrap or "",
                          convert_body=convert_body)
    for name in ("qemu-img", "bwrap") if real_bwrap else ("qemu-img",):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
