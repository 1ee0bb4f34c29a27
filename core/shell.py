"""A name from an image as ONE shell word an operator can paste: a leaf, so that every message naming a file of an
image (the search's finds, `ls`'s notes) renders it the same way.

What an image names is the image author's: a path may hold `$(…)`, quotes, spaces that fake a list, a newline or
an ESC, or bytes that are no UTF-8 (kept by Python as lone surrogates). Printed as it is, pasting it could run
code; escaped for the terminal only after quoting (`\\x0a` inside '…'), it would paste as another path.
"""

from __future__ import annotations

import shlex


def shell_word(text: str) -> str:
    """`text` as one word for bash (zsh, ksh): `shlex.quote` when every character is printable (`/image/x.qcow2`
    as it is, `'/my disks/x.img'`), else bash's `$'…'` with each other character as the bytes of its name
    (`\\xNN`, as the file system holds them) and `\\\\`, `\\'` escaped: `$'/a\\x0ab'`. The result is printable
    text: a terminal shows it as it is, and it pastes as the very name."""
    if text.isprintable():
        return shlex.quote(text)
    escaped = []
    for char in text:
        if char in "\\'":
            escaped.append("\\" + char)
        elif char.isprintable():
            escaped.append(char)
        else:
            escaped.extend(f"\\x{byte:02x}" for byte in _name_bytes(char))
    return "$'" + "".join(escaped) + "'"


def _name_bytes(char: str) -> bytes:
    """The bytes `char` stands for in a file name: UTF-8, and an undecodable byte (Python's lone surrogate
    U+DC80-U+DCFF) as that byte; any other lone surrogate as UTF-8 would write it, so it is still shown."""
    try:
        return char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogatepass")
