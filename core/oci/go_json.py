"""JSON documents read as Go's encoding/json reads them into the image-spec structs, where that differs from a
Python dict: a struct field takes the value of the *last* key that equals its name under Go's case folding
(`config`, `Config` and `CONFIG` alike; the Kelvin sign is a k, the long s an s). skopeo and podman decode an
index, a manifest and a config that way; cdisk reads the same fields out of the same bytes.
"""

from __future__ import annotations

import json
from typing import Any


def _fold(key: str) -> str:
    # Go folds each rune to the least of its fold set; of those that reach ASCII, only U+212A (K) and U+017F (s)
    # are not ASCII themselves: lower() takes the first to k, the second is taken to s here.
    return key.lower().replace("\u017f", "s")


class GoObject(dict[str, Any]):
    """A JSON object as Go decodes it. Asked for a key (`get`, `[]`, `in`), it answers as a struct field does:
    the last value whose key folds to it. Iterated (`items`: annotations, labels, Go maps), it gives the exact
    keys, the last of two equal ones winning, as a Go map does."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self._fields = {_fold(key): value for key, value in pairs}

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields.get(_fold(key), default)

    def __getitem__(self, key: str) -> Any:
        return self._fields[_fold(key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _fold(key) in self._fields


def loads(data: bytes) -> Any:
    """`data` parsed with every object a `GoObject`.

    Raises:
        ValueError: not JSON.
        RecursionError: nested beyond Python's limit.
    """
    return json.loads(data, object_pairs_hook=GoObject)
