"""`cdisk serve IMAGE`: the image's disk as a read-only NBD export on a Unix socket, until SIGINT or SIGTERM."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict

from plumbum import cli

from cdisk.cli.output import failed, progress_for
from cdisk.cli.switches import DiskSwitches
from cdisk.core.errors import EXIT_OK, Interrupted


class Serve(DiskSwitches):
    """Serve the disk of IMAGE read-only over NBD (qemu-nbd) until SIGINT or SIGTERM, reading it in place."""

    socket = cli.SwitchAttr(["--socket"], str, default=None,
                            help="The Unix socket to listen on (default: a private directory under "
                                 "$XDG_RUNTIME_DIR, or /run/cdisk as root)")
    shared = cli.SwitchAttr(["--shared"], int, default=1, help="How many clients may connect at once")

    def main(self, image: str) -> int:
        from cdisk.core.serve import serving

        try:
            with progress_for(self) as progress, serving(self.image_request(image), self.read_request(),
                                                         self.socket, int(self.shared), progress) as served:
                if self.as_json:
                    print(json.dumps(asdict(served)), flush=True)
                elif not self.quiet:
                    print(served.uri, flush=True)
                while True:  # until SIGINT or SIGTERM, which the handlers turn into Interrupted
                    signal.pause()
        except Interrupted:
            return EXIT_OK  # stopped as asked: qemu-nbd stopped, the socket removed
        except Exception as error:
            return failed(self, error)
