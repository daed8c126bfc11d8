"""Checkpoints: named models and run states round trip, choosing the newest complete one,
refusing the wrong ones, and reading checkpoints of the previous format."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from megatron_rm.config import ParallelConfig, TrainConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import METADATA, first_usable, read_metadata, resolve
from megatron_rm.core.optim import SkipGuard, build_optimizer
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError, DamagedCheckpoint
from megatron_rm.model import build_reward_model
from tests.conftest import REPO, tiny_model_config

FORMAT_1 = REPO / "tests" / "fixtures" / "format1_checkpoint"
"""A training checkpoint (step 2, TP1) written by the previous checkpoint format: one unnamed
model, its run state under "training". See format1_checkpoint_continuation.json for how."""


@pytest.fixture
def setup(single_rank):
    cfg = tiny_model_config()
    vocab = len(load_tokenizer(cfg.tokenizer))
    return cfg, vocab, padded_vocab_size(vocab, cfg)


def _state(cfg, vocab, seed, *, optimizer=False) -> checkpoint.ModelState:
    torch.manual_seed(seed)
    model = build_reward_model(cfg, ParallelConfig(), vocab)
    state = checkpoint.ModelState(model, cfg, padded_vocab_size(vocab, cfg))
    if optimizer:
        _, state.optimizer, state.scheduler = build_optimizer(model, TrainConfig(lr=1e-2), 10)
    return state


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _one(state) -> dict:
    return {"model": state}


def test_save_then_load_restores_every_weight(setup, tmp_path):
    cfg, vocab, _ = setup
    saved = _state(cfg, vocab, seed=1)
    path = checkpoint.save(tmp_path, 7, _one(saved))
    assert path == tmp_path / "step_7" and (path / METADATA).is_file()
    other = _state(cfg, vocab, seed=2)
    assert not torch.equal(other.module.reward_head.weight, saved.module.reward_head.weight)
    assert checkpoint.load(path, _one(other))["step"] == 7
    expected = _weights(saved.module)
    assert set(_weights(other.module)) == set(expected)
    for name, value in _weights(other.module).items():
        assert torch.equal(value, expected[name]), name


def _train_once(state: checkpoint.ModelState, seed: int) -> None:
    """One optimizer step on a random loss, so that Adam's moments and the schedule move."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    from megatron_rm.model.inputs import position_ids

    state.optimizer.zero_grad()
    state.module(ids, position_ids(mask), mask).square().sum().backward()
    for param in state.module.parameters():
        param.main_grad = param.grad  # megatron's optimizer reads the DDP gradient buffer's name
    state.optimizer.step()
    state.scheduler.step(increment=1)


def test_named_models_and_objects_round_trip_with_their_optimizers(setup, single_rank, tmp_path):
    """Two models in one checkpoint (a PPO actor and critic, say), each with its own optimizer
    and schedule, plus named run states: all come back, none mixed up with another."""
    cfg, vocab, _ = setup
    other_cfg = dataclasses.replace(cfg, num_labels=2)
    actor, critic = _state(cfg, vocab, 1, optimizer=True), _state(other_cfg, vocab, 2, optimizer=True)
    _train_once(actor, 1)
    _train_once(critic, 2)
    _train_once(critic, 3)
    guard = SkipGuard(5)
    guard.total, guard.in_a_row = 3, 1
    path = checkpoint.save(tmp_path, 4, {"actor": actor, "critic": critic},
                           objects={"skip_guard": guard}, layout=single_rank)
    metadata = read_metadata(path)
    assert sorted(metadata["models"]) == ["actor", "critic"] and metadata["layout"] == {"tp": 1, "pp": 1, "dp": 1}

    actor2, critic2 = _state(cfg, vocab, 7, optimizer=True), _state(other_cfg, vocab, 8, optimizer=True)
    loaded = checkpoint.load(path, {"actor": actor2, "critic": critic2}, optimizers=True)
    checkpoint.restore_schedulers(loaded, {"actor": actor2, "critic": critic2})
    restored_guard = SkipGuard(5)
    restored_guard.load_state_dict(loaded["state"]["skip_guard"])
    assert (restored_guard.total, restored_guard.in_a_row) == (3, 1)
    for before, after in ((actor, actor2), (critic, critic2)):
        for name, value in _weights(after.module).items():
            assert torch.equal(value, _weights(before.module)[name]), name
        assert after.scheduler.num_steps == before.scheduler.num_steps
        moments = [s["exp_avg"] for s in before.optimizer.optimizer.state.values()]
        moments_after = [s["exp_avg"] for s in after.optimizer.optimizer.state.values()]
        assert len(moments) == len(moments_after) > 0
        assert all(torch.equal(a, b) for a, b in zip(moments, moments_after))
    assert critic2.scheduler.num_steps == 2 and actor2.scheduler.num_steps == 1

    # One model of it initialises a model of another name; a missing name is refused.
    fresh = _state(cfg, vocab, 9)
    checkpoint.load(path, {"policy": fresh}, sources={"policy": "actor"})
    assert torch.equal(fresh.module.reward_head.weight, actor.module.reward_head.weight)
    with pytest.raises(CheckpointError, match="no model 'reward'"):
        checkpoint.load(path, {"reward": _state(cfg, vocab, 9)})


def test_format_1_checkpoint_reads_as_format_2_and_loads(setup):
    cfg, vocab, _ = setup
    metadata = read_metadata(FORMAT_1)
    assert metadata["format"] == 2 and metadata["step"] == 2
    entry = metadata["models"]["model"]
    assert entry["prefix"] == "" and entry["optimizer"] and entry["scheduler"]["num_steps"] == 2
    assert metadata["state"]["sampler"]["consumed_samples"] == 16
    assert metadata["state"]["skip_guard"] == {"total": 0, "in_a_row": 0}
    assert metadata["layout"] == {"tp": 1, "pp": 1, "dp": 1}

    state = _state(cfg, vocab, 3, optimizer=True)
    before = _weights(state.module)
    checkpoint.load(FORMAT_1, _one(state), optimizers=True)
    after = _weights(state.module)
    assert all(not torch.equal(before[name], after[name]) for name in after)
    assert all(s["exp_avg"].abs().sum() > 0 for s in state.optimizer.optimizer.state.values())


def test_resolve_takes_the_newest_complete_step(setup, tmp_path):
    cfg, vocab, _ = setup
    model = _state(cfg, vocab, seed=1)
    checkpoint.save(tmp_path, 3, _one(model))
    checkpoint.save(tmp_path, 12, _one(model))  # "step_12" < "step_3" as text
    (tmp_path / "step_20").mkdir()  # no metadata: not complete
    (tmp_path / ".step_30.incomplete").mkdir()
    assert (tmp_path / "latest").read_text() == "step_12\n"
    assert resolve(tmp_path) == tmp_path / "step_12"
    assert resolve(tmp_path / "step_3") == tmp_path / "step_3"
    (tmp_path / "latest").write_text("step_3\n")  # `latest` decides, not the largest number
    assert resolve(tmp_path) == tmp_path / "step_3"
    (tmp_path / "latest").unlink()  # without it, the newest complete one
    assert resolve(tmp_path) == tmp_path / "step_12"


@pytest.mark.parametrize("damage,named", [
    ("rng_missing", "rng/rank_00000.pt: missing"),
    ("rng_truncated", "rng/rank_00000.pt: unreadable"),
    ("common_missing", "common.pt: missing"),
])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(setup, single_rank, tmp_path, damage, named):
    cfg, vocab, _ = setup
    model = _state(cfg, vocab, seed=1)
    for step in (1, 2):
        checkpoint.save(tmp_path, step, _one(model), objects={"skip_guard": SkipGuard(3)}, layout=single_rank)
    newest = tmp_path / "step_2"
    rng = newest / "rng" / "rank_00000.pt"
    if damage == "rng_missing":
        rng.unlink()
    elif damage == "rng_truncated":
        rng.write_bytes(rng.read_bytes()[:40])
    else:
        (newest / "common.pt").unlink()
    with pytest.warns(UserWarning, match=f"{newest / named}.*\n.*falling back to {tmp_path / 'step_1'}"):
        assert resolve(tmp_path) == tmp_path / "step_1"


def test_a_latest_file_that_is_not_text_is_damaged_and_the_newest_checkpoint_used(setup, tmp_path):
    cfg, vocab, _ = setup
    model = _state(cfg, vocab, seed=1)
    for step in (1, 2):
        checkpoint.save(tmp_path, step, _one(model))
    (tmp_path / "latest").write_bytes(b"\xff\xfe\x00step")
    with pytest.warns(UserWarning, match="latest: damaged"):
        assert resolve(tmp_path) == tmp_path / "step_2"


def test_first_usable_falls_back_past_damaged_checkpoints(tmp_path):
    found = [tmp_path / "step_3", tmp_path / "step_2", tmp_path / "step_1"]
    warnings = []

    def use(directory):
        if directory.name != "step_1":
            raise DamagedCheckpoint(f"{directory}: damaged")
        return "loaded"

    assert first_usable(found, use, warnings.append) == (tmp_path / "step_1", "loaded")
    assert len(warnings) == 2 and f"falling back to {tmp_path / 'step_2'}" in warnings[0]
    def damaged(directory):
        raise DamagedCheckpoint(f"{directory}: damaged")

    with pytest.raises(DamagedCheckpoint, match="step_1: damaged"):  # the last one's error
        first_usable(found, damaged, warnings.append)


def test_keep_removes_the_oldest_and_leftover_staging(setup, tmp_path):
    cfg, vocab, _ = setup
    model = _state(cfg, vocab, seed=1)
    (tmp_path / ".step_7.incomplete").mkdir(parents=True)  # a save killed earlier
    for step in (2, 4, 6, 8):
        checkpoint.save(tmp_path, step, _one(model), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_6", "step_8"]


def test_missing_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resolve(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a megatron-rm checkpoint"):
        resolve(tmp_path)


def test_a_different_architecture_is_named_field_by_field(setup, tmp_path):
    cfg, vocab, padded = setup
    checkpoint.save(tmp_path, 1, _one(_state(cfg, vocab, seed=1)))
    smaller = dataclasses.replace(cfg, hidden_size=32, ffn_hidden_size=96)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(tmp_path, _one(_state(smaller, vocab, seed=1)))
    message = str(error.value)
    assert "model.hidden_size: checkpoint 64, this run 32" in message
    assert "model.ffn_hidden_size: checkpoint 176, this run 96" in message
    other_vocab = _state(cfg, vocab, seed=1)
    other_vocab.padded_vocab_size = 512
    with pytest.raises(CheckpointError, match=f"padded vocabulary: checkpoint {padded}, this run 512"):
        checkpoint.load(tmp_path, _one(other_vocab))


def test_metadata_without_tensors_fails_with_the_folder_named(setup, tmp_path):
    cfg, vocab, _ = setup
    saved = checkpoint.save(tmp_path / "real", 1, _one(_state(cfg, vocab, seed=1)))
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    shutil.copy(saved / METADATA, hollow / METADATA)
    with pytest.raises(CheckpointError, match=f"{hollow}: no tensor index"):
        checkpoint.load(hollow, _one(_state(cfg, vocab, seed=1)))
    assert json.loads((saved / METADATA).read_text())["models"]["model"]["config"]["hidden_size"] == 64
