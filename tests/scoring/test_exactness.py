"""Scores are the same numbers whatever the path: TP1, TP2, PP2 and DP2; from the Hugging Face
folder (converted in memory) and from our checkpoint; one batch of mixed lengths, packed, or
one text at a time; verl's `compute_reward`; eval_rm's report; training's own evaluation;
and `transformers` on the exported model. A token-head model's step rewards and rewards
(score_rm's rows) are held to the same layouts and batchings.

Real torchrun jobs over gloo run exactness_worker.py: a one-rank job for TP1 and one
two-rank job for TP2, PP2 and DP2 in turn.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from megatron_rm.convert import export_hf, import_hf
from tests.conftest import DEMO, REPO, torchrun
from tests.convert.hf_models import save_model
from tests.scoring.score_rm_files import read_rows, write_rows
from tests.scoring.token_models import ROWS as TOKEN_ROWS
from tests.scoring.token_models import save_token_model, written

pytestmark = pytest.mark.slow  # real torchrun jobs

WORKER = REPO / "tests" / "scoring" / "exactness_worker.py"
LAYOUTS = {"tp1pp1": (1, 1, 1), "tp2pp1": (2, 1, 2), "tp1pp2": (1, 2, 2), "dp2": (1, 1, 2)}
PAIRS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    root = tmp_path_factory.mktemp("exactness")
    save_model("llama", root / "hf", seed=3)
    import_hf(root / "hf", root / "checkpoint")
    rows = [json.loads(line) for line in (DEMO / "data" / "eval.jsonl").read_text().splitlines()[:PAIRS]]
    rows[0]["chosen"] += " and then a much longer answer" * 6  # lengths spread well apart
    (root / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    save_token_model(root / "token_hf")
    token_rows = TOKEN_ROWS + [{"prompt": "Count", "completions": ["one two" * n] * n} for n in range(1, 6)]
    write_rows(root / "token_rows.jsonl", token_rows)
    common = ["--hf", str(root / "hf"), "--checkpoint", str(root / "checkpoint"), "--pairs", str(root / "pairs.jsonl"),
              "--token-hf", str(root / "token_hf"), "--token-rows", str(root / "token_rows.jsonl")]
    torchrun(1, WORKER, *common, "--out", str(root / "one"), "--layout", "1", "1")
    torchrun(2, WORKER, *common, "--out", str(root / "two"), "--layout", "2", "1", "--layout", "1", "2",
             "--layout", "1", "1")
    results = {"tp1pp1": json.loads((root / "one" / "tp1pp1.json").read_text())}
    for name, file in (("tp2pp1", "tp2pp1"), ("tp1pp2", "tp1pp2"), ("dp2", "tp1pp1")):
        results[name] = json.loads((root / "two" / f"{file}.json").read_text())
    texts = [(row["prompt"], row[key]) for row in rows for key in ("chosen", "rejected")]
    return root, results, texts


def _close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=rtol, atol=1e-6)


def test_every_layout_source_and_batching_gives_the_same_rewards(setup):
    _, results, _ = setup
    reference = results["tp1pp1"]["checkpoint"]["alone"]
    assert len({round(value, 4) for value in reference}) > 1  # a real model, not a constant
    for result in results.values():
        for source in ("hf", "checkpoint"):
            for batching in ("bucket", "pack", "alone", "verl"):
                _close(result[source][batching], reference)


def test_token_head_scores_are_the_same_at_every_layout_and_batching(setup):
    root = setup[0]

    def scores(folder: str, layout: str, batching: str) -> list[float]:
        rows = read_rows(root / folder / f"token_{layout}_{batching}.jsonl")
        return [value for row in rows for reward, steps in written(row) for value in (reward, *(steps or []))]

    reference = scores("one", "tp1pp1", "alone")
    assert len(reference) > 40 and len({round(value, 4) for value in reference}) > 20
    for folder, layout in (("one", "tp1pp1"), ("two", "tp2pp1"), ("two", "tp1pp2"), ("two", "tp1pp1")):
        for batching in ("bucket", "pack", "alone"):
            _close(scores(folder, layout, batching), reference)


def test_training_evaluation_and_eval_rm_report_the_scorers_rewards(setup):
    _, results, _ = setup
    for result in results.values():
        rewards = result["checkpoint"]["bucket"]
        chosen, rejected = rewards[0::2], rewards[1::2]
        means = [sum(chosen) / len(chosen), sum(rejected) / len(rejected)]
        for report in (result["training"], result["checkpoint"]["eval_rm"], result["hf"]["eval_rm"]):
            _close([report["chosen_reward"], report["rejected_reward"]], means)


def test_transformers_on_the_exported_model_agrees(setup, tmp_path, single_rank):
    root, results, texts = setup
    export_hf(root / "checkpoint", tmp_path / "exported")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")  # the stock call, one text at a time
    with torch.no_grad():
        expected = [model(**tokenizer(prompt + response, return_tensors="pt")).logits.item()
                    for prompt, response in texts]
    _close(results["tp1pp1"]["checkpoint"]["alone"], expected, rtol=1e-4)
