"""The table of cdisk's commands: a leaf that `cli.app` (the entry point) and `cli.top` (the application) both
read, so neither imports the other for it."""

# Each command, the module and class that run it, and its line in `cdisk --help`.
COMMANDS = {
    "convert": ("cdisk.cli.convert.Convert", "Write the image's disk to TARGET (a file or a block device)"),
    "ls": ("cdisk.cli.ls.Ls", "Show what the image holds, without converting"),
    "verify": ("cdisk.cli.verify.Verify",
               "Check that TARGET holds exactly the image's disk, or without TARGET that IMAGE is intact"),
    "refresh": ("cdisk.cli.refresh.Refresh", "Make TARGET current (for cron and systemd timers)"),
    "serve": ("cdisk.cli.serve.Serve", "Serve the disk as a read-only NBD export, no conversion"),
    "build": ("cdisk.cli.build.Build", "Build a containerDisk from a disk file, without a Containerfile"),
}
