"""Debian's docker-registry started by the suite on 127.0.0.1, its access log kept: what a registry was asked."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cdisk.core.processes import die_with_parent

# The access log's lines (combined log format): [TIME] "METHOD URI HTTP/x" STATUS BYTES.
_ACCESS = re.compile(r'\[(\S+) [^]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)')


@dataclass(frozen=True)
class Request:
    when: str  # to the second, as the log has it (02/Jan/2006:15:04:05)
    method: str
    uri: str
    status: int
    bytes: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """A docker-registry of its own (storage and log under `root`), started at once; `stop` ends it. With `proxy`
    (an upstream's URL), a pull-through cache of that registry (docker-registry's proxy mode)."""

    def __init__(self, root: Path, env: dict[str, str], proxy: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.log = root / "access.log"
        config = root / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n"
                          f"  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: {self.address}\n"
                          + (f"proxy:\n  remoteurl: {proxy}\n" if proxy else ""))
        with open(self.log, "ab") as out:
            # It dies with its starter (SIGKILL included): a suite killed before its end leaves no registry.
            self._proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out,
                                          stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while not self.answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def answers(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", int(self.address.rpartition(":")[2]))) == 0

    def mark(self) -> int:
        """Where the log is now: `requests(mark)` gives what came after."""
        return self.log.stat().st_size

    def requests(self, since: int = 0) -> list[Request]:
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [Request(m[1], m[2], m[3], int(m[4]), 0 if m[5] == "-" else int(m[5])) for m in _ACCESS.finditer(text)]

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
