"""tools/train_rm.py loss.type=prm end to end: it learns the steps' labels, logs the step metrics,
records how to score the model, and resumes exactly from a checkpoint."""

from __future__ import annotations

import json

import pytest

from megatron_rm.core.checkpoint_files import model_config, read_metadata, resolve
from tests.conftest import REPO, torchrun
from tests.objectives.step_rows import stepwise_rows, write_rows

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_rm.py")
SETTINGS = ("loss.type=prm", "train.global_batch_size=32", "train.micro_batch_size=8", "train.lr=1e-2",
            "train.log_interval=1", "eval.interval=12", "checkpoint.save_interval=4", "train.max_steps=36")
EVAL_FIELDS = {"loss", "step_accuracy", "error_step_f1", "first_error_accuracy", "auroc", "solution_accuracy", "ece"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_prm")
    train = write_rows(root / "train.jsonl", stepwise_rows(384, seed=5))
    held_out = write_rows(root / "eval.jsonl", stepwise_rows(64, seed=6))
    data = (f"data.train_path={train}", f"data.eval_path={held_out}")
    torchrun(2, TOOL, *SETTINGS, *data, f"run.dir={root / 'whole'}")
    # The last 4 steps again, from the step-32 checkpoint, at another layout.
    step_32 = root / "whole" / "checkpoints" / "step_32"
    torchrun(2, TOOL, *SETTINGS, *data, "parallel.tp=2", f"checkpoint.load={step_32}", f"run.dir={root / 'resumed'}")
    return root


def _rows(run_dir, split):
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if row["split"] == split]


def test_a_prm_learns_the_step_labels_and_logs_the_step_metrics(runs):
    first, *_, last = _rows(runs / "whole", "eval")
    assert (first["step"], last["step"]) == (12, 36)
    assert EVAL_FIELDS <= set(first) and EVAL_FIELDS <= set(last)
    # A third of the rows rate some right steps neutral, which loss.neutral=negative makes wrong: the
    # held-out ceiling is below 1.
    assert last["step_accuracy"] >= 0.85 and last["auroc"] >= 0.9 and last["first_error_accuracy"] >= 0.7
    assert last["loss"] < first["loss"] - 0.1


def test_the_checkpoint_records_a_token_head_and_how_to_score_it(runs):
    directory = resolve(runs / "whole" / "checkpoints")
    metadata = read_metadata(directory)
    config = model_config(directory, metadata)
    assert (config.head, config.num_labels) == ("token", 2)
    assert metadata["token_scores"] == {"loss": "prm", "num_classes": 2, "neutral": "negative",
                                        "aggregation": "product", "step_separator": "\n", "step_tag": "ки"}


def test_a_resumed_run_repeats_the_uninterrupted_one(runs):
    whole = {row["step"]: row for row in _rows(runs / "whole", "train")}
    resumed = _rows(runs / "resumed", "train")
    assert [row["step"] for row in resumed] == [33, 34, 35, 36]
    for row in resumed:
        assert row["loss"] == pytest.approx(whole[row["step"]]["loss"], rel=1e-5)
        assert row["step_accuracy"] == whole[row["step"]]["step_accuracy"]
    final, resumed_final = _rows(runs / "whole", "eval")[-1], _rows(runs / "resumed", "eval")[-1]
    assert resumed_final["step_accuracy"] == final["step_accuracy"]
    assert resumed_final["loss"] == pytest.approx(final["loss"], rel=1e-5)
