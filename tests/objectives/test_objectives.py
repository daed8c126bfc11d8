"""Each loss.type through the real model on one rank, against the plain loss function; the data
and the settings a loss needs; the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_rm.config import DataConfig, LossConfig, ParallelConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.data.batching import collate
from megatron_rm.errors import ConfigError, DataError
from megatron_rm.model import build_reward_model
from megatron_rm.objectives import OBJECTIVES, build_objective, losses
from tests.conftest import tiny_model_config
from tests.data.test_batching import make_store

GROUPS = [
    [[5, 6, 7, 8, 1], [5, 6, 9, 1]],
    [[9, 1], [9, 8, 8, 8, 8, 1]],
    [[3, 3, 4, 1], [3, 4, 1], [3, 5, 5, 5, 1]],
    [[20, 21, 22, 1], [20, 23, 1]],
]
LABELS = [[[0.5, np.nan], [1.0, 2.0]], [[np.nan, np.nan], [0.0, -1.0]],
          [[1.0, 1.0], [np.nan, 0.5], [2.0, 0.0]], [[0.1, 0.2], [0.3, np.nan]]]


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", GROUPS, margins=[1.5, None, None, -0.5], labels=LABELS)


def tiny_model(num_labels=1):
    cfg = tiny_model_config()
    cfg.num_labels = num_labels
    torch.manual_seed(0)
    return build_reward_model(cfg, ParallelConfig(), len(load_tokenizer(cfg.tokenizer))).eval()


def objective(loss_type: str, num_labels: int = 1, **loss):
    return build_objective(LossConfig(type=loss_type, **loss), num_labels)


@pytest.mark.parametrize("loss_type", ["bradley_terry", "margin", "plackett_luce", "regression"])
def test_each_loss_through_the_model_matches_its_function(single_rank, store, loss_type):
    num_labels = 2 if loss_type == "regression" else 1
    model = tiny_model(num_labels)
    batch = collate(store, range(len(GROUPS)), 0, packed=False)
    loss = objective(loss_type, num_labels)
    rewards = loss.forward(model, batch)
    loss_sum, terms, extra = loss(batch, rewards)
    r = rewards.detach()
    better, worse = batch.comparisons[:, 0], batch.comparisons[:, 1]
    expected, expected_terms = {
        "bradley_terry": (losses.bradley_terry_loss(r[better, 0], r[worse, 0]).sum(), 6),
        "margin": (losses.bradley_terry_loss(r[better, 0], r[worse, 0], batch.margins).sum(), 6),
        "plackett_luce": (losses.plackett_luce_loss(r[:, 0], torch.tensor([2, 2, 3, 2])).sum(), 4),
        "regression": (((r - batch.labels) ** 2).nansum(), 13),
    }[loss_type]
    assert float(loss_sum.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert int(terms) == expected_terms and terms.dtype == torch.int
    summary = loss.summarize(extra["sums"])
    assert summary["loss"] == pytest.approx(float(expected) / expected_terms, rel=1e-6)
    assert loss.loss_of(extra["sums"]) == summary["loss"]
    assert summary["pairs"] == 6  # pair metrics whatever the loss
    loss_sum.backward()  # the loss is differentiable through the model


def test_margins_shift_the_loss(single_rank, store):
    batch = collate(store, range(len(GROUPS)), 0, packed=False)
    rewards = objective("bradley_terry").forward(tiny_model(), batch).detach()
    plain, _, _ = objective("bradley_terry")(batch, rewards)
    with_margin, _, _ = objective("margin")(batch, rewards)
    assert float(plain) != pytest.approx(float(with_margin), rel=1e-3)


def test_centering_adds_its_penalty(single_rank, store):
    batch = collate(store, [0, 1, 3], 0, packed=False)
    rewards = objective("bradley_terry").forward(tiny_model(), batch).detach() + 3.0  # off-centre rewards
    plain, _, _ = objective("bradley_terry")(batch, rewards)
    centered, _, _ = objective("bradley_terry", centering_coef=0.01)(batch, rewards)
    chosen, rejected = rewards[batch.comparisons[:, 0], 0], rewards[batch.comparisons[:, 1], 0]
    penalty = 0.01 * ((chosen + rejected) ** 2).sum()
    assert float(centered) == pytest.approx(float(plain + penalty), rel=1e-6)


def test_divergence_reads_token_values_and_rewards_at_the_last_token(single_rank, store):
    model = tiny_model()
    batch = collate(store, [0, 1, 3], 0, packed=False)
    divergence = objective("divergence")
    assert divergence.token_values and not objective("bradley_terry").token_values
    values = divergence.forward(model, batch)
    rewards = objective("bradley_terry").forward(model, batch)
    lengths = batch.attention_mask.sum(-1)
    # Each row's value at its last real token is the document's reward.
    torch.testing.assert_close(values[torch.arange(6), lengths - 1], rewards, rtol=1e-5, atol=1e-6)
    loss_sum, terms, extra = divergence(batch, values)
    better, worse = batch.comparisons[:, 0], batch.comparisons[:, 1]
    expected = losses.divergence_token_loss(values[better, :, 0], values[worse, :, 0], batch.input_ids[better],
                                            batch.input_ids[worse], lengths[better], lengths[worse]).sum()
    assert float(loss_sum.detach()) == pytest.approx(float(expected.detach()), rel=1e-6) and int(terms) == 3
    summary = divergence.summarize(extra["sums"])
    assert summary["chosen_reward"] == pytest.approx(float(rewards[better, 0].detach().mean()), rel=1e-5)


def test_plackett_luce_ranks_only_groups_of_two_or_more(single_rank, tmp_path):
    mixed = make_store(tmp_path / "mixed", [GROUPS[2], [[7, 7, 1]], GROUPS[0]])
    batch = collate(mixed, range(3), 0, packed=False)
    rewards = objective("plackett_luce").forward(tiny_model(), batch).detach()
    loss_sum, terms, _ = objective("plackett_luce")(batch, rewards)
    ranked = torch.tensor([0, 1, 2, 4, 5])  # the single response (document 3) ranks nothing
    expected = losses.plackett_luce_loss(rewards[ranked, 0], torch.tensor([3, 2])).sum()
    assert float(loss_sum) == pytest.approx(float(expected), rel=1e-6) and int(terms) == 2


def test_a_loss_the_data_cannot_feed_is_refused(store, tmp_path):
    pairs_only = make_store(tmp_path / "pairs", [GROUPS[0], GROUPS[1]])
    with pytest.raises(DataError, match="loss.type=plackett_luce ranks K-wise groups.*: pairs.jsonl"):
        objective("plackett_luce").check_data(pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="loss.type=margin needs a margin per pair"):
        objective("margin").check_data(pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="loss.type=regression needs attribute labels"):
        objective("regression").check_data(pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="the data has 2 attributes per response, model.num_labels=3"):
        objective("regression", 3).check_data(store, "mixed.jsonl")
    for loss_type in ("bradley_terry", "margin", "plackett_luce", "divergence"):
        objective(loss_type).check_data(store, "mixed.jsonl")
    objective("regression", 2).check_data(store, "mixed.jsonl")


def test_pairwise_losses_refuse_single_responses_only(tmp_path):
    singles = make_store(tmp_path / "singles", [[[5, 6, 1]], [[7, 1]]], margins=[1.0, None],
                         labels=[[[0.5]], [[1.0]]])
    for loss_type in ("bradley_terry", "margin", "divergence"):
        with pytest.raises(DataError, match=f"loss.type={loss_type} compares responses to one prompt.*: one.jsonl"):
            objective(loss_type).check_data(singles, "one.jsonl")
    objective("regression").check_data(singles, "one.jsonl")
    with_a_pair = make_store(tmp_path / "with_a_pair", [[[5, 6, 1]], GROUPS[0]])
    objective("bradley_terry").check_data(with_a_pair, "some.jsonl")


def test_settings_a_loss_cannot_run_with():
    data, parallel = DataConfig(), ParallelConfig()
    assert all(objective(t, 2 if t in ("regression", "orm", "prm") else 1).config_problems(data, parallel) == []
               for t in OBJECTIVES)
    assert objective("bradley_terry", 3).config_problems(data, parallel) == [
        "model.num_labels=3: loss.type=bradley_terry trains a scalar reward "
        "(model.num_labels=1; loss.type=regression trains several attributes)"]
    assert objective("regression", 3).config_problems(data, parallel) == []
    assert objective("plackett_luce", centering_coef=0.1).config_problems(data, parallel) == [
        "loss.centering_coef=0.1 applies to loss.type=bradley_terry or margin, not plackett_luce"]
    assert objective("margin", centering_coef=0.1).config_problems(data, parallel) == []
    assert objective("bradley_terry", centering_coef=-1.0).config_problems(data, parallel) == [
        "loss.centering_coef=-1.0 must be >= 0"]
    problems = objective("divergence").config_problems(DataConfig(batching="pack"),
                                                       ParallelConfig(sequence_parallel=True))
    assert len(problems) == 2
    assert "needs data.batching=bucket (got pack)" in problems[0]
    assert "not with parallel.sequence_parallel=true" in problems[1]


def test_an_unknown_loss_type_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="loss.type='hinge' must be one of bradley_terry, margin, "
                                          "plackett_luce, divergence, regression"):
        objective("hinge")
