"""Paths inside an image as the engines' Go code reads them: cleaned as `filepath.Clean` cleans them, bounded
as Linux bounds them. Every stage that names a file of an image (archive members, layer members, --path) uses
these, so that cdisk and the engine never disagree on which file a name means.
"""

from __future__ import annotations

# Linux's NAME_MAX and PATH_MAX (with its NUL): longer names fail to unpack in storage.
NAME_MAX, PATH_MAX = 255, 4095


def go_clean(path: str) -> str:
    """Go's `filepath.Clean` on Linux: lexical, '..' at a rooted start dropped, "" is "."."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not rooted:
            parts.append("..")
    cleaned = "/".join(parts)
    return "/" + cleaned if rooted else cleaned or "."
