"""Failure records of multi-rank runs: a rank finds another rank's error of this run, never its own or a stale one."""
from __future__ import annotations

import os
import time

from momo_ds.engine import failure


def test_peer_failure_finds_this_runs_record_of_another_rank(tmp_path):
    started = time.time()
    assert failure.peer_failure(tmp_path, 0, started) is None
    failure.record(tmp_path, 0, "my own error", printed=True)
    assert failure.peer_failure(tmp_path, 0, started) is None, "a rank's own record is not a peer's"
    failure.record(tmp_path, 3, "stream 'image': no usable sample", printed=False)
    found = failure.peer_failure(tmp_path, 0, started)
    assert found == failure.Failure(3, "stream 'image': no usable sample", False)
    assert not list((tmp_path / failure.FAILURE_DIR).glob(".*")), "no temporary file left behind"


def test_records_of_earlier_runs_are_ignored(tmp_path):
    failure.record(tmp_path, 1, "an old run's error", printed=True)
    old = time.time() - 3600
    path = tmp_path / failure.FAILURE_DIR / "rank00001.json"
    os.utime(path, (old, old))
    assert failure.peer_failure(tmp_path, 0, time.time() - 60) is None
    path.write_text("{not json")  # unreadable: skipped, never raises
    assert failure.peer_failure(tmp_path, 0, 0.0) is None
