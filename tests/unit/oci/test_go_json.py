"""Documents read as Go reads them (skopeo and podman decode with encoding/json): a field takes the last key
that equals its name under case folding."""

from __future__ import annotations

from cdisk.core.oci.go_json import loads


def test_a_field_takes_the_last_key_that_folds_to_its_name() -> None:
    document = loads(b'{"config": 1, "Config": 2, "\\u017fize": 3, "\\u212aind": 4, "notes": {"a": 1, "A": 2}}')
    assert (document.get("config"), document["config"], document.get("size"), document.get("kind")) == (2, 2, 3, 4)
    assert "CONFIG" in document and "other" not in document
    assert dict(document["notes"].items()) == {"a": 1, "A": 2}  # a map's keys are exact, as in a Go map
