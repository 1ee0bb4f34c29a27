"""A typed job in a child cdisk, relayed back as JSON lines: the child's `main()` on its own, and the parent's
`run()` with an engine whose user namespace is a plain child process (no podman). The jobs the children run
are the functions below, imported by name as the real ones are.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from cdisk.core.engines.seam import Image
from cdisk.core.errors import (
    ChildCrashed,
    ChildError,
    Interrupted,
    TargetError,
    UserNamespaceUnavailable,
)
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.progress import Progress
from cdisk.core.reading import userns
from cdisk.core.request import ImageRequest

REPO = Path(__file__).resolve().parents[3]
HERE = __name__


# --- the jobs ---------------------------------------------------------------------------------------------------

def reports(job: dict[str, Any], progress: Any) -> dict[str, Any]:
    progress.stage("mounting")
    progress.update(1, 4)
    print("a stray line of a tool", flush=True)
    print("[1, 2]", flush=True)
    progress.warn("qemu-img runs without a sandbox")
    progress.update(4, 4)
    return {"echo": job, "done": True}


def refuses(job: dict[str, Any], progress: Any) -> dict[str, Any]:
    progress.stage("checking the target")
    raise TargetError(job["why"])


def crashes(job: dict[str, Any], progress: Any) -> dict[str, Any]:
    print("some noise first", file=sys.stderr, flush=True)
    raise RuntimeError("boom")


def says_nothing(job: dict[str, Any], progress: Any) -> list[int]:
    return [1, 2]


def is_interrupted(job: dict[str, Any], progress: Any) -> dict[str, Any]:
    raise Interrupted(signal.SIGHUP)


def waits(job: dict[str, Any], progress: Any) -> dict[str, Any]:
    held = Path(job["held"])
    held.write_text("a file the job removes however it ends")
    try:
        progress.stage("waiting")
        while True:
            time.sleep(0.01)
    finally:
        held.unlink()


# --- the child: main() ------------------------------------------------------------------------------------------

@pytest.fixture
def handlers() -> Iterator[None]:
    """main() installs cdisk's signal handlers, as the child does: the test run's own are put back after."""
    kept = {signum: signal.getsignal(signum)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXFSZ)}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)


def lines(out: str) -> list[Any]:
    return [json.loads(line) for line in out.splitlines()]


def test_main_relays_progress_and_the_result(handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert userns.main(f"{HERE}:reports", '{"target": "/srv/vm.raw"}') == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:4] == ["a stray line of a tool", "[1, 2]"]
    assert lines("\n".join(out[:2] + out[4:])) == [
        {"stage": "mounting"}, {"update": [1, 4]}, {"warn": "qemu-img runs without a sandbox"}, {"update": [4, 4]},
        {"result": {"echo": {"target": "/srv/vm.raw"}, "done": True}},
    ]


def test_main_relays_a_cdisk_error_with_its_exit_code(handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert userns.main(f"{HERE}:refuses", '{"why": "no room for it"}') == 6
    assert lines(capsys.readouterr().out) == [{"stage": "checking the target"},
                                              {"error": "no room for it", "exit_code": 6}]


def test_main_ends_an_interrupted_job_with_128_plus_the_signal(handlers: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert userns.main(f"{HERE}:is_interrupted", "{}") == 128 + signal.SIGHUP
    assert capsys.readouterr().out == ""


def test_main_lets_a_crash_through(handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match=r"^boom$"):
        userns.main(f"{HERE}:crashes", "{}")
    assert capsys.readouterr().out == ""


def test_main_installs_the_stopping_signal_handlers(handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    from cdisk.core.signals import _interrupt

    userns.main(f"{HERE}:says_nothing", "{}")
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == [_interrupt] * 3
    assert lines(capsys.readouterr().out) == [{"result": [1, 2]}]


# --- the parent: run() ------------------------------------------------------------------------------------------

class Recorded:
    def __init__(self, on_stage: Any = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.on_stage = on_stage

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))
        if self.on_stage:
            self.on_stage(name)

    def update(self, done: float, total: float) -> None:
        self.events.append(("update", done, total))

    def warn(self, message: str) -> None:
        self.events.append(("warn", message))


class PlainEngine:
    """An engine whose user namespace is no namespace at all: `argv` as a plain child, stopped and reaped when
    the block ends. With `instead`, that runs in argv's place (an engine that cannot start the child)."""

    name = "fake"
    mounts = copies = stores = True
    cannot_mount = ""

    def __init__(self, instead: list[str] | None = None) -> None:
        self.instead = instead
        self.children: list[subprocess.Popen[bytes]] = []

    def available(self) -> bool:
        return True

    def lookup(self, reference: str, progress: Progress) -> Image | None:
        raise AssertionError("not asked here")

    def find_image(self, request: ImageRequest, progress: Progress) -> Image:
        raise AssertionError("not asked here")

    def mount(self, image: Image) -> AbstractContextManager[str]:
        raise AssertionError("not asked here")

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        raise AssertionError("not asked here")

    def load(self, archive: Path) -> None:
        raise AssertionError("not asked here")

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        raise AssertionError("not asked here")

    @contextmanager
    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> Iterator[subprocess.Popen[bytes]]:
        proc = subprocess.Popen(self.instead or list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                cwd=REPO)
        self.children.append(proc)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


def test_run_relays_progress_and_returns_the_result() -> None:
    engine, progress = PlainEngine(), Recorded()
    result = userns.run(engine, f"{HERE}:reports", {"target": "/srv/vm.raw", "size": 3}, progress)
    assert result == {"echo": {"target": "/srv/vm.raw", "size": 3}, "done": True}
    assert progress.events == [("stage", "mounting"), ("update", 1, 4),
                               ("warn", "qemu-img runs without a sandbox"), ("update", 4, 4)]
    argv = engine.children[0].args
    assert isinstance(argv, list) and argv[:2] == [sys.executable, "-c"]
    assert engine.children[0].returncode == 0


def test_run_raises_the_childs_cdisk_error_with_its_exit_code() -> None:
    progress = Recorded()
    with pytest.raises(ChildError) as raised:
        userns.run(PlainEngine(), f"{HERE}:refuses", {"why": "no room for it"}, progress)
    assert (raised.value.message, raised.value.exit_code) == ("no room for it", 6)
    assert progress.events == [("stage", "checking the target")]


def test_a_child_that_crashes_is_a_bug_reported_with_its_last_words() -> None:
    engine = PlainEngine()
    with pytest.raises(ChildCrashed) as raised:
        userns.run(engine, f"{HERE}:crashes", {}, Recorded())
    assert raised.value.message == ("the conversion inside fake unshare crashed: RuntimeError: boom; please report it "
                                    "(with the output of --debug); --method save avoids the user namespace")
    assert raised.value.exit_code == 1 and raised.value.returncode == 1
    assert "some noise first" in raised.value.stderr
    argv = engine.children[0].args
    assert isinstance(argv, list) and raised.value.argv == [str(arg) for arg in argv]


def test_a_child_that_cannot_import_the_job_failed_after_its_hello() -> None:
    with pytest.raises(ChildCrashed) as raised:
        userns.run(PlainEngine(), "cdisk_no_such_module:job", {}, Recorded())
    assert raised.value.message.startswith("the conversion inside fake unshare crashed: ModuleNotFoundError: No "
                                           "module named 'cdisk_no_such_module'; please report it")


def test_a_child_that_ends_without_a_result_crashed() -> None:
    with pytest.raises(ChildCrashed) as raised:
        userns.run(PlainEngine(), f"{HERE}:says_nothing", {}, Recorded())
    assert raised.value.message.startswith("the conversion inside fake unshare crashed: exit code 0; please report it")


def test_an_engine_that_cannot_start_the_child_says_so() -> None:
    refusal = "import sys; print('a tool warns', file=sys.stderr); " \
              "print('cannot clone: Operation not permitted', file=sys.stderr); sys.exit(125)"
    engine = PlainEngine([sys.executable, "-c", refusal])
    with pytest.raises(UserNamespaceUnavailable) as raised:
        userns.run(engine, f"{HERE}:reports", {}, Recorded())
    assert raised.value.message == "fake unshare failed: cannot clone: Operation not permitted; use --method save"
    assert raised.value.reason == "fake unshare failed: cannot clone: Operation not permitted"
    assert (raised.value.exit_code, raised.value.returncode) == (7, 125)
    assert raised.value.stderr == "a tool warns\ncannot clone: Operation not permitted\n"
    assert raised.value.argv == [sys.executable, "-c", refusal]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_the_child_ends_it_cleanly_with_128_plus_its_number(signum: signal.Signals,
                                                                        tmp_path: Path) -> None:
    held = tmp_path / "held"
    engine = PlainEngine()

    def signal_the_child(name: str) -> None:
        assert held.exists()
        engine.children[0].send_signal(signum)

    with pytest.raises(ChildCrashed) as raised:
        userns.run(engine, f"{HERE}:waits", {"held": str(held)}, Recorded(signal_the_child))
    assert raised.value.returncode == 128 + signum
    assert raised.value.message.startswith(f"the conversion inside fake unshare crashed: exit code {128 + signum};")
    assert raised.value.stderr == ""  # Interrupted, not a traceback
    assert not held.exists()  # its cleanup ran
    assert engine.children[0].returncode == 128 + signum  # and it is gone, reaped
