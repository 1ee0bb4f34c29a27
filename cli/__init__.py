"""The command line: argument parsing and terminal output only; the work is in cdisk.core."""
