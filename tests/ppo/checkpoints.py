"""Tiny random models saved as real checkpoints for PPO runs: a policy (the actor), a reward
model (critic and reward) and a reward model with another tokenizer. Written from the in-process
rank (`single_rank`); torchrun jobs then load them at any layout."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import DEFAULT_MODEL
from megatron_rm.data import load_tokenizer
from megatron_rm.model import build_policy_model, build_reward_model
from tests.conftest import DEMO, tiny_model_config


def save_tiny_models(root: Path, **fields) -> dict[str, Path]:
    """{"policy", "reward", "other_tokenizer"}: checkpoint folders under `root`; `fields` change
    the tiny config (conf/model/tiny.yaml)."""
    config = replace(tiny_model_config(), **fields)
    tokenizer = load_tokenizer(config.tokenizer)
    other = load_tokenizer(config.tokenizer)
    other.add_tokens(["<another-token>"])
    made = {}
    for name, build, kind, vocab in (("policy", build_policy_model, "policy", tokenizer),
                                     ("reward", build_reward_model, "reward", tokenizer),
                                     ("other_tokenizer", build_reward_model, "reward", other)):
        torch.manual_seed(len(made) + 11)
        module = build(config, ParallelConfig(), len(vocab))
        state = checkpoint.ModelState(module, config, padded_vocab_size(len(vocab), config), kind=kind)
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        made[name] = checkpoint.save(folder, 0, {DEFAULT_MODEL: state}, tokenizer=vocab)
    return made


def save_run_inputs(root: Path, **fields) -> dict[str, Path]:
    """`save_tiny_models(root / "models", **fields)`, and `root/prompts.jsonl`: 24 demo rows to prompt with."""
    models = save_tiny_models(root / "models", **fields)
    rows = (DEMO / "data" / "train.jsonl").read_text().splitlines(keepends=True)
    (root / "prompts.jsonl").write_text("".join(rows[:24]))
    return models
