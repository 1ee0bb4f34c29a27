"""Documents read as Go reads them (skopeo and podman decode with encoding/json): a field takes the last key
that equals its name under case folding."""

from __future__ import annotations

import pytest

from cdisk.core.oci.go_json import loads


def test_a_field_takes_the_last_key_that_folds_to_its_name() -> None:
    document = loads(b'{"config": 1, "Config": 2, "\\u017fize": 3, "\\u212aind": 4, "notes": {"a": 1, "A": 2}}')
    assert (document.get("config"), document["config"], document.get("size"), document.get("kind")) == (2, 2, 3, 4)
    assert "CONFIG" in document and "other" not in document
    assert dict(document["notes"].items()) == {"a": 1, "A": 2}  # a map's keys are exact, as in a Go map


@pytest.mark.parametrize("data", [
    b'{"mediaType": "application/vnd.oci.image.index.v1+json", "MediaType": null}',  # Go keeps the first
    b'{"annotations": {"a": "1"}, "Annotations": {"b": "2"}}',  # Go merges the two
    b'{"layers": null, "LAYERS": []}',
], ids=["null-after-a-string", "two-objects", "null-then-a-list"])
def test_a_field_given_twice_where_go_would_not_take_the_last_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="comes twice"):
        loads(data)


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16"), b'{"a": NaN}',
                                  b'{"a": Infinity}', b'{"a": "\xff"}'],
                         ids=["bom", "utf-16", "nan", "infinity", "not-utf-8"])
def test_what_go_does_not_parse_is_not_json(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)

