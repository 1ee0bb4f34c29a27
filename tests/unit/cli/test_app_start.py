"""`cli.app`: the sandbox probe of a command that runs qemu-img starts before plumbum and the command's modules are
imported (so that bwrap works while Python imports), and never for --help or --version; the process ends as the
interpreter would end it (threads joined, atexit handlers run, output flushed, the exit status), without the
finalization of every module; plumbum's unused urllib.request and pickle are imported only where something uses them."""

from __future__ import annotations

import subprocess
import sys

import pytest

_RUN = """
import sys
from cdisk.core.qemu import sandbox
seen = []
sandbox.start_probe = lambda: seen.append(sorted(m for m in ("plumbum", "cdisk.cli.convert") if m in sys.modules))
from cdisk.cli import app
try:
    app.main(["cdisk", *sys.argv[1:]])
except SystemExit:
    pass
print(seen[:1], file=sys.stderr)  # the first: resolve() asks again later, at no cost
"""


def _probes(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["convert", "--engine", "nosuch", "x", "y"], ["-v", "ls", "x"],
                                  ["serve", "--json", "x"]])
def test_a_sandboxed_command_probes_before_the_heavy_imports(argv: list[str]) -> None:
    assert _probes(*argv) == "[[]]"


@pytest.mark.parametrize("argv", [["convert", "--help"], ["--version"], ["--help"], ["build", "-h"]])
def test_help_and_version_probe_nothing(argv: list[str]) -> None:
    assert _probes(*argv) == "[]"


_ENDS = """
import atexit, sys, threading, time
from cdisk.cli import app

class Finalized:
    def __del__(self):
        print("finalized", flush=True)

kept = Finalized()  # a module's global: collected only by the interpreter's own finalization
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
sys.argv = ["cdisk", *sys.argv[1:]]
app.main()
print("not reached")
"""


@pytest.mark.parametrize(("argv", "status", "err"), [(["--version"], 0, ""),
                                                    (["convert"], 2, "cdisk: error: IMAGE and TARGET missing")])
def test_the_process_ends_after_atexit_without_finalizing_the_modules(argv: list[str], status: int, err: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _ENDS, *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == status
    lines = proc.stdout.splitlines()
    assert lines[-2:] == ["thread done", "atexit ran"]
    assert "finalized" not in lines and "not reached" not in lines
    assert proc.stderr.startswith(err)


def test_plumbums_unused_modules_are_imported_only_where_used() -> None:
    code = ("import sys\nfrom cdisk.cli import app\napp._defer_unused_modules()\nimport plumbum.cli\n"
            "print('http.client' in sys.modules, '_pickle' in sys.modules)\nfrom urllib.request import pathname2url\n"
            "print(pathname2url('/a b'), 'http.client' in sys.modules, type(sys.modules['urllib.request']).__name__)\n"
            "import pickle\nprint(pickle.loads(pickle.dumps([1])), type(sys.modules['pickle']).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["False False", "/a%20b True module", "[1] module"]


def test_the_fast_exit_ends_with_an_idle_thread_pool_left_open() -> None:
    # The interpreter's own exit wakes an idle ThreadPoolExecutor's workers before it joins them; a bare join of
    # every thread waited for them for ever.
    script = ("import sys\nfrom concurrent.futures import ThreadPoolExecutor\npool = ThreadPoolExecutor(2)\n"
              "pool.submit(lambda: 1).result()\nsys.argv = ['cdisk', '--version']\nfrom cdisk.cli import app\n"
              "app.main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split()[0], done.stderr) == (0, "cdisk", "")


def test_loading_plumbum_runs_no_uname_child() -> None:
    """plumbum indexes platform.uname() as it loads, which would run `uname -p` (a fork and exec every run)."""
    code = ("import subprocess, sys\nran = []\nreal = subprocess.Popen.__init__\n"
            "def seen(self, args, *a, **k):\n    ran.append(args)\n    real(self, args, *a, **k)\n"
            "subprocess.Popen.__init__ = seen\n"
            "from cdisk.cli import app\napp._no_uname_child()\nimport plumbum.cli, platform, os\n"
            "print(ran, platform.uname().system == os.uname().sysname, platform.processor() == os.uname().machine)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["[]", "True", "True"]
