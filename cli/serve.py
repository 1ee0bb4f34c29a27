"""`cdisk serve IMAGE`: the image's disk as a read-only NBD export, until SIGINT or SIGTERM (or `--stop`)."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from dataclasses import asdict

from plumbum import cli

from cdisk.cli.output import failed, printable, progress_for
from cdisk.cli.switches import DiskSwitches
from cdisk.core.errors import EXIT_OK, Interrupted, UsageError


class Serve(DiskSwitches):
    """Serve the disk of IMAGE read-only over NBD until SIGINT or SIGTERM, reading it in place; or stop one
    (--stop SOCKET)."""

    SYNOPSIS = ("IMAGE", "--stop SOCKET")

    socket = cli.SwitchAttr(["--socket"], str, default=None, argname="PATH",
                            help="The Unix socket to listen on (default: a private directory under "
                                 "$XDG_RUNTIME_DIR, or /run/cdisk as root)")
    socket_mode = cli.SwitchAttr(["--socket-mode"], str, default="600", argname="MODE",
                                 help="Who may connect to the socket, as an octal mode: 0600 (default) its owner, "
                                      "0660 its group too")
    listen = cli.SwitchAttr(["--listen"], str, default=None, argname="ADDR:PORT",
                            help="Listen on TCP at ADDR:PORT instead (no TLS: anyone who reaches it reads the disk)")
    shared = cli.SwitchAttr(["--shared"], str, default="1", argname="N",
                            help="How many clients may connect at once, per disk: 1 (default) to 1000")
    every = cli.Flag(["--all"], help="Serve every disk under /disk/, each as its own export")
    overlay = cli.SwitchAttr(["--overlay"], str, default=None, argname="FILE",
                             help="Also create this qcow2 overlay backed by the export (a VM writes only there)")
    detach = cli.Flag(["--detach"], help="Go to the background once serving (stop it with --stop SOCKET)")
    pid_file = cli.SwitchAttr(["--pid-file"], str, default=None, argname="FILE",
                              help="Write the serving process's pid here once serving")
    stop = cli.SwitchAttr(["--stop"], str, default=None, argname="SOCKET",
                          help="Stop the cdisk serve that serves on SOCKET, and wait until it has cleaned up")

    def main(self, image: str = "") -> int:
        from cdisk.core.commands import daemon
        from cdisk.core.commands.serve import ServeRequest, serving, shared, socket_mode, stop

        serves = False
        try:
            if self.stop is not None:
                if image:
                    raise UsageError("--stop SOCKET takes no IMAGE")
                stopped = stop(str(self.stop))
                if self.as_json:
                    print(json.dumps({"stopped": stopped, "socket": self.stop}))
                return EXIT_OK
            if not image:
                raise UsageError("IMAGE missing: cdisk serve [SWITCHES] IMAGE, or cdisk serve --stop SOCKET")
            asked = ServeRequest(self.socket, self.listen, socket_mode(self.socket_mode), shared(self.shared),
                                 bool(self.every), self.overlay)
            if self.detach:
                code = daemon.detach()
                if code is not None:
                    return code  # the parent: the child is serving (0), or said why not
            with ExitStack() as held:
                # The progress display ends once serving: no spinner for the hours a server runs.
                with progress_for(self) as progress:
                    server = held.enter_context(serving(self.image_request(image), self.read_request(), progress,
                                                        asked, lambda: daemon.pid_file(self.pid_file)))
                serves = True  # the server answers: from now on a signal is how it is stopped
                served = server.served
                if self.as_json:
                    print(json.dumps(asdict(served)), flush=True)
                elif not self.quiet:
                    print("\n".join(export.uri for export in served.exports), flush=True)
                    if sys.stderr.isatty() and not self.detach:
                        print("cdisk: serving read-only until Ctrl-C", file=sys.stderr, flush=True)
                daemon.ready()
                server.wait()  # until SIGINT or SIGTERM, which the handlers turn into Interrupted
        except Interrupted as stopped_by:
            # Once serving, a signal is how a server is stopped: done, the socket removed. Before, it cut the
            # start short (the parent of --detach included: its child stopped too).
            return EXIT_OK if serves else stopped_by.exit_code
        except Exception as error:
            code = failed(self, error)
            if serves:
                # A detached server's stderr goes nowhere: its last error goes to syslog, escaped as on a terminal.
                daemon.log_error(printable(str(getattr(error, "message", error))))
            return code
        return EXIT_OK
