"""metrics.jsonl holds one row per step and split, whatever happened to the run."""

from __future__ import annotations

import json

from megatron_rm.training.metrics_log import MetricsLog


def _rows(path):
    return [(row["step"], row["split"]) for row in map(json.loads, path.read_text().splitlines())]


def test_a_resumed_run_drops_the_rows_it_will_write_again(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in range(1, 6):
        log.write(step, "train", {"loss": 1.0 / step})
        if step % 2 == 0:
            log.write(step, "eval", {"loss": 1.0 / step})
    # Killed after step 5, the newest checkpoint being step 2's: steps 3 to 5 are run again.
    MetricsLog(tmp_path, enabled=True, since=2).write(3, "train", {"loss": 0.3})
    assert _rows(tmp_path / "metrics.jsonl") == [(1, "train"), (2, "train"), (2, "eval"), (3, "train")]
    MetricsLog(tmp_path, enabled=True)  # no `since` (an evaluation alone): nothing is dropped
    assert len(_rows(tmp_path / "metrics.jsonl")) == 4
    MetricsLog(tmp_path, enabled=False, since=1)  # only the logging rank touches the file
    assert len(_rows(tmp_path / "metrics.jsonl")) == 4
    MetricsLog(tmp_path, enabled=True, since=0)  # a run starting afresh starts a new file
    assert (tmp_path / "metrics.jsonl").read_text() == ""
