"""`refresh --metrics-file`: node_exporter's textfile format, read back by Prometheus' own parser; replaced whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdisk.core.commands import refresh_metrics
from cdisk.core.commands.refresh_metrics import Outcome
from cdisk.core.errors import TargetError


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text as Prometheus reads it: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_an_update_is_told_in_every_metric() -> None:
    outcome = Outcome("/var/lib/vms/f.raw", "updated", 0, 1_765_000_000.25, 3.5, 1 << 30, "quay.io/x/f:40",
                      "sha256:" + "a" * 64)
    got = samples(refresh_metrics.render(outcome, 1_765_000_000.25))
    target = (("target", "/var/lib/vms/f.raw"),)
    assert got[("cdisk_refresh_last_run_timestamp_seconds", target)] == 1_765_000_000.25
    assert got[("cdisk_refresh_last_success_timestamp_seconds", target)] == 1_765_000_000.25
    assert {name[1][0][1]: value for name, value in got.items() if name[0] == "cdisk_refresh_outcome"} == {
        "updated": 1.0, "unchanged": 0.0, "not_checked": 0.0, "failed": 0.0}
    assert got[("cdisk_refresh_exit_code", target)] == 0
    assert got[("cdisk_refresh_duration_seconds", target)] == 3.5
    assert got[("cdisk_refresh_written_bytes", target)] == 1 << 30
    info = ("cdisk_refresh_image_info", (("digest", "sha256:" + "a" * 64), ("image", "quay.io/x/f:40"),
                                         ("target", "/var/lib/vms/f.raw")))
    assert got[info] == 1


def test_label_values_are_escaped_as_the_format_says() -> None:
    odd = '/vms/a "quoted"\\back\nline.raw'
    got = samples(refresh_metrics.render(Outcome(odd, "failed", 3, 1.0, 0.1), None))
    assert got[("cdisk_refresh_exit_code", (("target", odd),))] == 3
    assert not any(name == "cdisk_refresh_last_success_timestamp_seconds" for name, _ in got)  # never succeeded
    assert not any(name == "cdisk_refresh_image_info" for name, _ in got)  # holds nothing known


def test_a_failure_keeps_the_last_success_and_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "cdisk-refresh-f.prom"
    refresh_metrics.write(str(path), Outcome("/t", "unchanged", 0, 1000.0, 0.2, 0, "i", "d"))
    # A reader that opened the file before the next run sees the whole old file, not a half-written new one:
    # the new file is renamed over the old, never written in place.
    with open(path) as before:
        refresh_metrics.write(str(path), Outcome("/t", "failed", 7, 2000.0, 0.3))
        assert before.read() == refresh_metrics.render(Outcome("/t", "unchanged", 0, 1000.0, 0.2, 0, "i", "d"),
                                                       1000.0)
    got = samples(path.read_text())
    assert got[("cdisk_refresh_last_success_timestamp_seconds", (("target", "/t"),))] == 1000.0
    assert got[("cdisk_refresh_last_run_timestamp_seconds", (("target", "/t"),))] == 2000.0
    assert got[("cdisk_refresh_exit_code", (("target", "/t"),))] == 7
    refresh_metrics.write(str(path), Outcome("/t", "not_checked", 10, 3000.0, 0.3, 0, "i", "d"))
    assert samples(path.read_text())[("cdisk_refresh_last_success_timestamp_seconds", (("target", "/t"),))] == 1000
    assert sorted(os.listdir(tmp_path)) == ["cdisk-refresh-f.prom"]  # no temp name left


def test_a_metrics_file_in_no_directory_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no such directory"):
        refresh_metrics.check_place(str(tmp_path / "absent" / "x.prom"))
    with pytest.raises(TargetError, match="is a directory"):
        refresh_metrics.check_place(str(tmp_path))
    refresh_metrics.check_place(str(tmp_path / "x.prom"))


def test_a_fifo_or_a_link_at_the_path_is_no_previous_file_and_never_waited_on(tmp_path: Path) -> None:
    """Someone's FIFO at the path would hang a reader that opens it by name; a link would lead elsewhere."""
    fifo = tmp_path / "fifo.prom"
    os.mkfifo(fifo)
    assert refresh_metrics.previous_success(str(fifo)) is None
    real = tmp_path / "real.prom"
    refresh_metrics.write(str(real), Outcome("/t", "updated", 0, 5.0, 0.1))
    link = tmp_path / "link.prom"
    link.symlink_to(real)
    assert refresh_metrics.previous_success(str(real)) == 5.0
    assert refresh_metrics.previous_success(str(link)) is None
    refresh_metrics.write(str(fifo), Outcome("/t", "failed", 3, 6.0, 0.1))  # replaced by a file, not written into
    assert fifo.is_file()


def test_a_target_name_of_no_utf8_is_written_escaped(tmp_path: Path) -> None:
    odd = os.fsdecode(b"/vms/\xff.raw")
    path = tmp_path / "m.prom"
    refresh_metrics.write(str(path), Outcome(odd, "updated", 0, 1.0, 0.1))
    assert samples(path.read_text())[("cdisk_refresh_exit_code", (("target", "/vms/\\xff.raw"),))] == 0
