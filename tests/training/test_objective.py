"""Each loss.type through the real model on one rank, against the plain loss function; the data
a loss needs; model FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_rm import losses
from megatron_rm.config import LossConfig, ParallelConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.data.batching import collate
from megatron_rm.errors import DataError
from megatron_rm.model import build_reward_model
from megatron_rm.training import flops
from megatron_rm.training.objective import Objective, check_data_feeds
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


def _model(num_labels=1):
    cfg = tiny_model_config()
    cfg.num_labels = num_labels
    torch.manual_seed(0)
    return build_reward_model(cfg, ParallelConfig(), len(load_tokenizer(cfg.tokenizer))).eval()


def _forward(model, batch, token_values=False):
    from megatron_rm.model.inputs import position_ids

    return model(batch.input_ids, position_ids(batch.attention_mask), batch.attention_mask,
                 **({"token_values": True} if token_values else {}))


@pytest.mark.parametrize("loss_type", ["bradley_terry", "margin", "plackett_luce", "regression"])
def test_each_loss_through_the_model_matches_its_function(single_rank, store, loss_type):
    num_labels = 2 if loss_type == "regression" else 1
    model = _model(num_labels)
    batch = collate(store, range(len(GROUPS)), 0, packed=False)
    objective = Objective(LossConfig(type=loss_type), num_labels)
    rewards = _forward(model, batch)
    loss_sum, terms, extra = objective(batch, rewards)
    r = rewards.detach()
    better, worse = batch.comparisons[:, 0], batch.comparisons[:, 1]
    expected, expected_terms = {
        "bradley_terry": (losses.bradley_terry_loss(r[better, 0], r[worse, 0]).sum(), 6),
        "margin": (losses.bradley_terry_loss(r[better, 0], r[worse, 0], batch.margins).sum(), 6),
        "plackett_luce": (losses.plackett_luce_loss(r[:, 0], torch.tensor([2, 2, 3, 2])).sum(), 4),
        "regression": (((r - batch.labels) ** 2).nansum(), 13),
    }[loss_type]
    assert float(loss_sum.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert int(terms) == expected_terms
    summary = objective.summarize(extra["sums"])
    assert summary["loss"] == pytest.approx(float(expected) / expected_terms, rel=1e-6)
    assert summary["pairs"] == 6
    loss_sum.backward()  # the loss is differentiable through the model


def test_margins_shift_the_loss(single_rank, store):
    batch = collate(store, range(len(GROUPS)), 0, packed=False)
    rewards = _forward(_model(), batch).detach()
    plain, _, _ = Objective(LossConfig(type="bradley_terry"), 1)(batch, rewards)
    with_margin, _, _ = Objective(LossConfig(type="margin"), 1)(batch, rewards)
    assert float(plain) != pytest.approx(float(with_margin), rel=1e-3)


def test_centering_adds_its_penalty(single_rank, store):
    batch = collate(store, [0, 1, 3], 0, packed=False)
    rewards = _forward(_model(), batch).detach() + 3.0  # off-centre rewards
    plain, _, _ = Objective(LossConfig(), 1)(batch, rewards)
    centered, _, _ = Objective(LossConfig(centering_coef=0.01), 1)(batch, rewards)
    chosen, rejected = rewards[batch.comparisons[:, 0], 0], rewards[batch.comparisons[:, 1], 0]
    penalty = 0.01 * ((chosen + rejected) ** 2).sum()
    assert float(centered) == pytest.approx(float(plain + penalty), rel=1e-6)


def test_divergence_reads_token_values_and_rewards_at_the_last_token(single_rank, store):
    model = _model()
    batch = collate(store, [0, 1, 3], 0, packed=False)
    values = _forward(model, batch, token_values=True)
    rewards = _forward(model, batch)
    lengths = batch.attention_mask.sum(-1)
    # Each row's value at its last real token is the document's reward.
    torch.testing.assert_close(values[torch.arange(6), lengths - 1], rewards, rtol=1e-5, atol=1e-6)
    objective = Objective(LossConfig(type="divergence"), 1)
    loss_sum, terms, extra = objective(batch, values)
    better, worse = batch.comparisons[:, 0], batch.comparisons[:, 1]
    expected = losses.divergence_token_loss(values[better, :, 0], values[worse, :, 0], batch.input_ids[better],
                                            batch.input_ids[worse], lengths[better], lengths[worse]).sum()
    assert float(loss_sum.detach()) == pytest.approx(float(expected.detach()), rel=1e-6) and int(terms) == 3
    summary = objective.summarize(extra["sums"])
    assert summary["chosen_reward"] == pytest.approx(float(rewards[better, 0].detach().mean()), rel=1e-5)


def test_a_loss_the_data_cannot_feed_is_refused(store, tmp_path):
    pairs_only = make_store(tmp_path / "pairs", [GROUPS[0], GROUPS[1]])
    with pytest.raises(DataError, match="loss.type=plackett_luce ranks K-wise groups.*: pairs.jsonl"):
        check_data_feeds(LossConfig(type="plackett_luce"), 1, pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="loss.type=margin needs a margin per pair"):
        check_data_feeds(LossConfig(type="margin"), 1, pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="loss.type=regression needs attribute labels"):
        check_data_feeds(LossConfig(type="regression"), 1, pairs_only, "pairs.jsonl")
    with pytest.raises(DataError, match="the data has 2 attributes per response, model.num_labels=3"):
        check_data_feeds(LossConfig(type="regression"), 3, store, "mixed.jsonl")
    for loss_type in ("bradley_terry", "margin", "plackett_luce", "divergence"):
        check_data_feeds(LossConfig(type=loss_type), 1, store, "mixed.jsonl")


def test_dense_weights_are_the_layers_matrices(single_rank):
    cfg = tiny_model_config()
    model = _model()
    matrices = sum(p.numel() for name, p in model.named_parameters() if name.startswith("decoder.layers.")
                   and p.dim() == 2)
    assert flops.dense_weights(cfg) == matrices
    # One 10-token document: 3 x (2 x 10 x P + 2 x L x a x d x 10 x 11).
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected = 3 * (2 * 10 * matrices + 2 * cfg.num_layers * cfg.num_attention_heads * head_dim * 110)
    assert flops.training_flops(cfg, tokens=10, squared_lengths=100) == expected
