"""`cdisk build`: a containerDisk written directly from a disk file — the layer tar, its config and manifest made
by cdisk (reproducible: the same disk and switches give the same image ID), then loaded into an engine or
written as an OCI layout or archive.

`layer` writes the one layer; `image` the JSON documents and the file outputs; `disk_check` refuses what is
plainly not a disk (compressed, an archive, text, a partial sector); `command` checks the disk as convert would,
converts it if asked, and puts the pieces together.
"""
