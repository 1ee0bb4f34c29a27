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
        self._fields: dict[str, Any] = {}
        for key, value in pairs:
            folded = _fold(key)
            if folded in self._fields:
                earlier = self._fields[folded]
                # Go leaves a scalar or struct field as it was for a null, clears a slice, map or pointer, and
                # merges a second object into the first: cdisk cannot tell which from the name, so it refuses.
                if value is None or earlier is None or (isinstance(value, dict) and isinstance(earlier, dict)):
                    raise ValueError(f"the key {key!r} comes twice (in any case) with a null or an object")
            self._fields[folded] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields.get(_fold(key), default)

    def __getitem__(self, key: str) -> Any:
        return self._fields[_fold(key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _fold(key) in self._fields


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes) -> Any:
    """`data` parsed with every object a `GoObject`, as strictly as Go parses: UTF-8 only (no BOM, no UTF-16),
    no NaN or Infinity.

    Raises:
        ValueError: not JSON Go reads.
        RecursionError: nested beyond Python's limit.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        raise ValueError("a byte-order mark")
    return json.loads(data.decode("utf-8"), object_pairs_hook=GoObject, parse_constant=_no_constant)
