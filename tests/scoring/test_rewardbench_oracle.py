"""RewardBench's own code as a second oracle: its row formatting (`prepare_dialogue_from_tokenizer`)
and its default pipeline (`RewardBenchPipeline`) score a Hugging Face reward model's rows, and
`tools/eval_rm.py --chat` (`evaluate_file(chat=True)`) gives the same per-row rewards.

The tokenizer is Qwen-style, as most RewardBench entries with a chat template have: a ChatML template,
a pad token of its own, and a tokenizer that adds no special tokens (RewardBench tokenizes the
rendered text with them again; a tokenizer that adds a BOS gets two, and RewardBench masks one)."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pytest
import transformers

from megatron_rm.convert import export_hf, import_hf
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.evaluation import evaluate_file
from megatron_rm.scoring.scorer import Scorer
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant
from tests.scoring.test_report import _function_from, _rewardbench_file

ROWS = [
    {"prompt": "Name a fruit.", "chosen": "A lime.", "rejected": "A chair, I think.", "subset": "alpacaeval-easy"},
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "It is 5, of course.", "subset": "math-prm"},
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "count to three"}],
     "chosen": "one two three", "rejected": "one two", "subset": "mt-bench-easy"},
]


class OnThisDevice:
    """RewardBench's pipeline moves its inputs to "cuda"; on a machine without one, they stay put."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        encoding = self.tokenizer(*args, **kwargs)
        encoding.to = lambda device: encoding
        return encoding


def rewardbench_rewards(folder) -> tuple[list[float], list[float]]:
    """(chosen, rejected) rewards of `ROWS` as RewardBench's `run_rm.py` gets them for a default model."""
    prepare = _function_from(_rewardbench_file("rewardbench/utils.py"), "prepare_dialogue_from_tokenizer",
                             {"Dict": dict, "Any": Any, "PreTrainedTokenizer": transformers.PreTrainedTokenizer})
    pipeline = runpy.run_path(str(_rewardbench_file("rewardbench/models/pipeline.py")))["RewardBenchPipeline"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.truncation_side = "left"  # as run_rm.py sets it
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    examples = [prepare(dict(row), tokenizer) for row in ROWS]
    pipe = pipeline("text-classification", model, OnThisDevice(tokenizer))
    kwargs = {"batch_size": 8, "truncation": True, "padding": True, "max_length": 2048}  # run_rm.py's
    return tuple(pipe([example[f"text_{side}"] for example in examples], **kwargs)[:, 0].tolist()
                 for side in ("chosen", "rejected"))


def save_hf_reward_model(folder, pad: str, kind: str = "sequence_classification"):
    save_model("llama", folder, kind, seed=21)
    save_variant(folder, pad=pad, chat=True)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = transformers.AutoTokenizer.from_pretrained(folder).pad_token_id
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_rows(path):
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


@pytest.mark.parametrize("pad", ["<pad>", "</s>"])
def test_eval_rm_gives_rewardbenchs_per_row_rewards(tmp_path, single_rank, pad):
    folder = save_hf_reward_model(tmp_path / "hf", pad)
    chosen, rejected = rewardbench_rewards(folder)
    path = write_rows(tmp_path / "rows.jsonl")
    report, counts = evaluate_file(path, Scorer(load_model(folder)), chat=True)
    assert counts["evaluated"] == len(ROWS)
    assert report.chosen_rewards == pytest.approx(chosen, rel=1e-4, abs=1e-5)
    assert report.rejected_rewards == pytest.approx(rejected, rel=1e-4, abs=1e-5)
    # Without --chat the plain text itself is scored (and a message-list prompt with string responses is invalid).
    plain, counts = evaluate_file(path, Scorer(load_model(folder)), on_invalid="skip")
    assert counts["invalid"] == 1 and plain.chosen_rewards != pytest.approx(chosen[:2], rel=1e-3)


def test_rewardbench_on_our_exported_model_equals_eval_rm_on_its_checkpoint(tmp_path, single_rank):
    """A reward model of ours (a new head, read at the EOS its exported tokenizer appends)."""
    import_hf(save_hf_reward_model(tmp_path / "lm", "</s>", kind="causal_lm"), tmp_path / "checkpoint")
    export_hf(tmp_path / "checkpoint", tmp_path / "hf")
    chosen, rejected = rewardbench_rewards(tmp_path / "hf")
    report, _ = evaluate_file(write_rows(tmp_path / "rows.jsonl"), Scorer(load_model(tmp_path / "checkpoint")),
                              chat=True)
    assert report.chosen_rewards == pytest.approx(chosen, rel=1e-4, abs=1e-5)
    assert report.rejected_rewards == pytest.approx(rejected, rel=1e-4, abs=1e-5)
