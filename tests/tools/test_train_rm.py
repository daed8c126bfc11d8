"""tools/train_rm.py end to end: the 8-rank TP2xPP2xDP2 run, reloading elsewhere, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
import yaml

from megatron_rm.data import GroupStore
from tests.conftest import DEMO, PYTHON, REPO, run_command, torchrun
from tests.convert.hf_models import save_model

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_rm.py")
TO_MEGATRON = str(REPO / "tools" / "convert_hf_to_megatron.py")
TO_HF = str(REPO / "tools" / "convert_megatron_to_hf.py")
CONTRACT_FIELDS = {"step", "split", "loss", "accuracy", "margin", "chosen_reward", "rejected_reward",
                   "tokens_per_s"}


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    path.write_text("".join((DEMO / "data" / "eval.jsonl").read_text().splitlines(keepends=True)[:64]))
    return path


@pytest.fixture(scope="module")
def eight_rank_run(tmp_path_factory, small_eval):
    """The product card's command: TP2 x PP2 x DP2 trains 6 steps (resuming is tested at 2 and 4
    ranks in tests/training/test_resume.py; a second 8-rank launch on 2 cores costs a minute)."""
    run_dir = tmp_path_factory.mktemp("tp2pp2dp2")
    torchrun(8, TOOL, "parallel.tp=2", "parallel.pp=2", "train.global_batch_size=16", "train.micro_batch_size=2",
             "train.lr_warmup_steps=0", "train.log_interval=1", "eval.interval=2", "checkpoint.save_interval=2",
             f"data.eval_path={small_eval}", f"run.dir={run_dir}", "train.max_steps=6")
    return run_dir


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_eight_ranks_train_evaluate_and_log_the_contract(eight_rank_run):
    rows = _rows(eight_rank_run)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [2, 4, 6]
    for row in rows:
        assert CONTRACT_FIELDS <= set(row)
        assert all(math.isfinite(row[k]) for k in CONTRACT_FIELDS - {"step", "split"})
    for row in train:
        assert {"lr", "grad_norm", "flops_per_s", "padding_efficiency", "skipped_steps", "ece"} <= set(row)
        assert row["mfu"] is None and row["flops_per_s"] > 0 and row["skipped_steps"] == 0  # no peak on CPU
    assert all(r["pairs"] == 16 for r in train) and all(r["pairs"] == 64 for r in evals)
    config = yaml.safe_load((eight_rank_run / "config.yaml").read_text())
    assert config["parallel"] == {"tp": 2, "pp": 2, "sequence_parallel": False,
                                  "use_distributed_optimizer": False}
    assert config["train"]["max_steps"] == 6


def test_checkpoints_at_the_interval_and_the_end(eight_rank_run):
    folders = sorted(p.name for p in (eight_rank_run / "checkpoints").iterdir())
    assert folders == ["latest", "step_2", "step_4", "step_6"]
    assert (eight_rank_run / "checkpoints" / "latest").read_text() == "step_6\n"


def test_the_final_checkpoint_stores_the_eval_reward_statistics(eight_rank_run):
    final_eval = _rows(eight_rank_run)[-1]
    saved = json.loads((eight_rank_run / "checkpoints" / "step_6" / "megatron_rm.json").read_text())
    assert saved["reward_normalization"] == {"mean": [final_eval["reward_mean"]], "std": [final_eval["reward_std"]]}
    assert final_eval["reward_std"] > 0 and 0 <= final_eval["ece"] <= 1


def test_checkpoint_reloads_at_another_layout_with_the_same_eval(eight_rank_run, small_eval, tmp_path):
    """The TP2xPP2 checkpoint evaluated on one rank (TP1, PP1) gives the same held-out metrics."""
    result = run_command([PYTHON, TOOL, "train.max_steps=0", f"checkpoint.load={eight_rank_run}/checkpoints",
                          f"data.eval_path={small_eval}", f"run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "step_6" in result.stdout  # the checkpoint `latest` names was chosen
    final = _rows(eight_rank_run)[-1]
    reloaded = _rows(tmp_path)[-1]
    assert reloaded["split"] == "eval" and reloaded["pairs"] == final["pairs"]
    for key in ("loss", "chosen_reward", "rejected_reward"):
        assert reloaded[key] == pytest.approx(final[key], rel=1e-5), key
    # The margin is a small difference of rewards: compare it on the rewards' scale.
    assert reloaded["margin"] == pytest.approx(final["margin"], abs=1e-5 * abs(final["chosen_reward"]))
    assert reloaded["accuracy"] == final["accuracy"]
    assert not (tmp_path / "checkpoints").exists()  # evaluate-only runs save nothing


def _stock_pair_metrics(folder, rows: list[dict], side: str) -> tuple[float, float]:
    """Bradley-Terry loss and accuracy over `rows` (prompt, chosen, rejected) as a transformers user
    scores them: `tok(texts, padding=True)` into the model, `.logits[:, 0]`, 8 texts a batch."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side=side)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    rewards = []
    for start in range(0, len(rows), 4):
        texts = [row["prompt"] + row[key] for row in rows[start:start + 4] for key in ("chosen", "rejected")]
        with torch.no_grad():
            rewards.append(model.eval()(**tok(texts, padding=True, return_tensors="pt")).logits[:, 0].double())
    pairs = torch.cat(rewards).view(-1, 2)
    margin = pairs[:, 0] - pairs[:, 1]
    return (-F.logsigmoid(margin)).mean().item(), (margin > 0).double().mean().item()


@pytest.mark.parametrize("side", ["right", "left"])
def test_exported_checkpoint_reproduces_the_runs_eval_through_the_stock_transformers_call(eight_rank_run, small_eval,
                                                                                          tmp_path, side):
    """The TP2xPP2 training checkpoint, exported, scores the held-out texts as training did: its
    tokenizer appends the EOS training read the reward at."""
    result = run_command([PYTHON, TO_HF, "--megatron-dir", str(eight_rank_run / "checkpoints"),
                          "--out-dir", str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr[-4000:]
    _, info = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    rows = [json.loads(line) for line in small_eval.read_text().splitlines()]
    assert len(GroupStore(eight_rank_run / "data" / "eval")) == len(rows)  # every held-out pair was evaluated
    loss, accuracy = _stock_pair_metrics(tmp_path / "hf", rows, side)
    final = _rows(eight_rank_run)[-1]
    assert loss == pytest.approx(final["loss"], rel=1e-5) and accuracy == final["accuracy"]


def test_trains_from_a_converted_checkpoint_with_no_model_override(small_eval, tmp_path):
    """A bf16 Qwen2 causal LM, converted, trains at TP2xPP2 with only checkpoint.load given."""
    save_model("qwen2", tmp_path / "hf", "causal_lm", dtype=torch.bfloat16)
    result = run_command([PYTHON, TO_MEGATRON, "--hf-dir", str(tmp_path / "hf"), "--out-dir", str(tmp_path / "ckpt")])
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "run"
    torchrun(4, TOOL, f"checkpoint.load={tmp_path / 'ckpt'}", "parallel.tp=2", "parallel.pp=2",
             "train.max_steps=2", "train.global_batch_size=8", "train.micro_batch_size=2",
             "train.lr_warmup_steps=0", "train.log_interval=1", f"data.eval_path={small_eval}",
             f"run.dir={run_dir}")
    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert (model["family"], model["add_qkv_bias"], model["ffn_hidden_size"]) == ("qwen2", True, 96)
    assert [r["step"] for r in _rows(run_dir) if r["split"] == "train"] == [1, 2]
    saved = json.loads((run_dir / "checkpoints" / "step_2" / "megatron_rm.json").read_text())
    assert saved["models"]["model"]["config"]["tokenizer"] == "tokenizer"
    assert (run_dir / "checkpoints" / "step_2" / "tokenizer" / "tokenizer.json").is_file()


BAD_INPUT = {
    # case: (extra arguments, expected message, data file content or None for the demo data)
    "malformed_json": (["data.train_path={data}"], "{data}:2: invalid JSON", "good\n{not json\n"),
    "empty_file": (["data.train_path={data}"], "{data}: no rows (the data is empty)", ""),
    "missing_checkpoint": (["checkpoint.load={tmp}/nowhere"], "{tmp}/nowhere: no such file", None),
    "misspelt_key": (["train.max_stepz=3"], "max_stepz", None),
    # Every invalid value (negative lr, warm-up beyond the run, ...) is covered in tests/test_config.py;
    # one of them here shows the message reaching the command line.
    "unknown_loss": (["loss.type=hinge"], "loss.type='hinge' must be one of", None),
    "kwise_on_pairs": (["loss.type=plackett_luce"],
                       "loss.type=plackett_luce ranks K-wise groups, and every group is a pair", None),
    # Adam moves every weight by ~lr: step 2 overflows, then each step is skipped until the guard stops.
    "diverging": (["train.lr=1e30", "train.lr_warmup_steps=0", "train.max_skipped=2"],
                  "step 4: 3 steps in a row had a non-finite loss or gradient norm", None),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_stops_with_a_clear_message(case, tmp_path):
    data = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    args, expected, content = BAD_INPUT[case]
    if content is not None:
        data.write_text(content.replace("good", good))
    fill = {"data": data, "tmp": tmp_path}
    result = run_command([PYTHON, TOOL, f"run.dir={tmp_path}/run", *(a.format(**fill) for a in args)])
    assert result.returncode != 0
    assert expected.format(**fill) in result.stderr
    assert "Traceback" not in result.stderr


def _mixed_rows() -> list[str]:
    """Pairs (some with a margin), K-wise rankings, invalid lines and over-long pairs."""
    lines = []
    for i in range(48):
        count = i % 6 + 2
        items = " ".join(f"{k}. fig" for k in range(1, count + 1))
        row = {"prompt": f"User: Name {count} fruits.\nAssistant:", "chosen": " " + items,
               "rejected": " " + items.rsplit(" ", 2)[0]}
        if i % 3 == 0:
            row["margin"] = 0.5
        lines.append(json.dumps(row))
    for i in range(12):
        lines.append(json.dumps({"prompt": f"User: Name {i % 4 + 3} colors.\nAssistant:",
                                 "responses": [" 1. red", " 1. red 2. blue 3. teal", " 1. red 2. blue"],
                                 "ranking": [1, 2, 0]}))
    lines += ["{oops", json.dumps({"prompt": "p", "chosen": "a"}),
              json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"})]
    lines += [json.dumps({"prompt": "User: go\nAssistant:", "chosen": " 1. fig" * 40, "rejected": " 1. fig"})] * 2
    return lines


def test_mixed_data_packed_with_a_prompt_split(tmp_path):
    """K-wise groups, margins, skipped and dropped rows, packing and a held-out split in one run."""
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(_mixed_rows()) + "\n")
    run_dir = tmp_path / "run"
    result = run_command([PYTHON, TOOL, f"data.train_path={data}", "data.eval_path=null", "data.eval_fraction=0.25",
                          "data.on_invalid=skip", "data.batching=pack", "train.max_steps=3",
                          "train.global_batch_size=8", "train.lr_warmup_steps=0", "train.log_interval=1",
                          f"run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["train"]["rows"] == 65 and report["train"]["groups"] == 60
    assert report["train"]["invalid"] == {"invalid_json": 1, "missing_field": 1, "wrong_type": 1}
    assert report["train"]["dropped"] == {"too_long": 2}
    split = report["split"]
    assert split["train_groups"] + split["eval_groups"] == 60 and split["eval_groups"] > 0
    assert "invalid 3 (invalid_json: 1, missing_field: 1, wrong_type: 1)" in result.stdout
    rows = _rows(run_dir)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(0.9 < r["padding_efficiency"] <= 1.0 for r in train)
    # Each step has 8 groups; a K-wise group of three contributes three pairs.
    assert all(8 <= r["pairs"] <= 24 for r in train)
    sampler = json.loads((run_dir / "checkpoints" / "step_3" / "megatron_rm.json").read_text())["state"]["sampler"]
    assert sampler["consumed_samples"] == 24 and sampler["num_groups"] == split["train_groups"]


def test_tensorboard_and_offline_wandb_receive_the_metrics(small_eval, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_command([PYTHON, TOOL, "train.max_steps=2", "train.lr_warmup_steps=0", "train.log_interval=1",
                          "logging.wandb=true", f"data.eval_path={small_eval}", f"run.dir={run_dir}"], env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    logged = [(r["step"], r["loss"]) for r in _rows(run_dir) if r["split"] == "train"]
    assert [step for step, _ in losses] == [1, 2]
    assert [value for _, value in losses] == pytest.approx([loss for _, loss in logged], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "eval/ece", "eval/reward_std"} <= set(
        events.Tags()["scalars"])
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
