"""Checkpoints: round trip, choosing the newest complete one, and refusing the wrong ones."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError
from megatron_rm.model import build_reward_model
from megatron_rm.training import checkpoint
from tests.conftest import tiny_model_config


@pytest.fixture
def setup(single_rank):
    cfg = tiny_model_config()
    vocab = len(load_tokenizer(cfg.tokenizer))
    return cfg, vocab, padded_vocab_size(vocab, cfg)


def _model(cfg, vocab, seed):
    torch.manual_seed(seed)
    return build_reward_model(cfg, ParallelConfig(), vocab)


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_save_then_load_restores_every_weight(setup, tmp_path):
    cfg, vocab, padded = setup
    saved_model = _model(cfg, vocab, seed=1)
    path = checkpoint.save(saved_model, tmp_path, 7, cfg, padded)
    assert path == tmp_path / "step_7" and (path / checkpoint.METADATA).is_file()
    other = _model(cfg, vocab, seed=2)
    assert not torch.equal(other.reward_head.weight, saved_model.reward_head.weight)
    assert checkpoint.load(other, path, cfg, padded)["step"] == 7
    expected = _weights(saved_model)
    assert set(_weights(other)) == set(expected)
    for name, value in _weights(other).items():
        assert torch.equal(value, expected[name]), name


def test_resolve_takes_the_newest_complete_step(setup, tmp_path):
    cfg, vocab, padded = setup
    model = _model(cfg, vocab, seed=1)
    checkpoint.save(model, tmp_path, 3, cfg, padded)
    checkpoint.save(model, tmp_path, 12, cfg, padded)  # "step_12" < "step_3" as text
    (tmp_path / "step_20").mkdir()  # no metadata: not complete
    (tmp_path / ".step_30.incomplete").mkdir()
    assert (tmp_path / "latest").read_text() == "step_12\n"
    assert checkpoint.resolve(tmp_path) == tmp_path / "step_12"
    assert checkpoint.resolve(tmp_path / "step_3") == tmp_path / "step_3"
    (tmp_path / "latest").write_text("step_3\n")  # `latest` decides, not the largest number
    assert checkpoint.resolve(tmp_path) == tmp_path / "step_3"
    (tmp_path / "latest").unlink()  # without it, the newest complete one
    assert checkpoint.resolve(tmp_path) == tmp_path / "step_12"


def test_keep_removes_the_oldest_and_leftover_staging(setup, tmp_path):
    cfg, vocab, padded = setup
    model = _model(cfg, vocab, seed=1)
    (tmp_path / ".step_7.incomplete").mkdir(parents=True)  # a save killed earlier
    for step in (2, 4, 6, 8):
        checkpoint.save(model, tmp_path, step, cfg, padded, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_6", "step_8"]


def test_missing_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.resolve(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a megatron-rm checkpoint"):
        checkpoint.resolve(tmp_path)


def test_a_different_architecture_is_named_field_by_field(setup, tmp_path):
    cfg, vocab, padded = setup
    checkpoint.save(_model(cfg, vocab, seed=1), tmp_path, 1, cfg, padded)
    smaller = dataclasses.replace(cfg, hidden_size=32, ffn_hidden_size=96)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(_model(smaller, vocab, seed=1), tmp_path, smaller, padded)
    message = str(error.value)
    assert "model.hidden_size: checkpoint 64, this run 32" in message
    assert "model.ffn_hidden_size: checkpoint 176, this run 96" in message
    with pytest.raises(CheckpointError, match="padded vocabulary: checkpoint 384, this run 512"):
        checkpoint.load(_model(cfg, vocab, seed=1), tmp_path, cfg, 512)


def test_metadata_without_tensors_fails_with_the_folder_named(setup, tmp_path):
    cfg, vocab, padded = setup
    saved = checkpoint.save(_model(cfg, vocab, seed=1), tmp_path / "real", 1, cfg, padded)
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    (hollow / checkpoint.METADATA).write_text((saved / checkpoint.METADATA).read_text())
    with pytest.raises(CheckpointError, match=f"{hollow}: no tensor index"):
        checkpoint.load(_model(cfg, vocab, seed=1), hollow, cfg, padded)
    assert json.loads((saved / checkpoint.METADATA).read_text())["model"]["hidden_size"] == 64
