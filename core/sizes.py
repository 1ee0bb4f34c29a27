"""Sizes as an operator reads them, in messages (core) and on the terminal (cli) alike."""

from __future__ import annotations


def size_text(n: int | None) -> str:
    """Bytes as an operator reads them: 8.0 MiB; `-` for a size not known."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
