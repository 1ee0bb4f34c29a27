"""The commands, each what cli/ calls once it has parsed the switches (build a folder of its own), and
`daemon`: how a long-running command (serve) lives beside scripts and systemd.
"""
