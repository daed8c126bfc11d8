"""The objectives' metric sums: named fields, summaries without pairs or without loss terms,
micro-batches that add up to the whole batch, and the model FLOPs they feed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megatron_rm.data import Batch, collate
from megatron_rm.objectives import losses
from megatron_rm.objectives.metrics import pair_sums
from megatron_rm.training import flops
from tests.conftest import tiny_model_config
from tests.data.test_batching import make_store
from tests.objectives.test_objectives import GROUPS, LABELS, objective, tiny_model

PAIR_METRICS = ("pairs", "accuracy", "margin", "chosen_reward", "rejected_reward", "ece")
SINGLES = [[[5, 6, 7, 1]], [[9, 1]], [[3, 3, 4, 8, 1]], [[20, 21, 1]]]
SINGLE_LABELS = [[[0.5]], [[np.nan]], [[-1.0]], [[2.0]]]


def test_summary_divides_each_sum_by_its_count():
    bradley_terry = objective("bradley_terry")
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0])
    rejected = torch.tensor([1.0, 1.0, 1.5, -1.0])  # right, tie, wrong, right
    sums = bradley_terry.layout.pack({
        **pair_sums(chosen, rejected), "tokens": 37, "padded_tokens": 40, "squared_lengths": 300.0,
        "loss": 1.0, "loss_terms": 4, "documents": 8, "reward_sum": 6.0, "reward_square_sum": 20.0})
    summary = bradley_terry.summarize(sums)
    assert summary["tokens"] == 37 and summary["documents"] == 8 and summary["squared_lengths"] == 300.0
    assert summary["padding_efficiency"] == pytest.approx(37 / 40)
    assert summary["loss"] == pytest.approx(1.0 / 4) and bradley_terry.loss_of(sums) == summary["loss"]
    assert summary["pairs"] == 4 and summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["reward_mean"] == pytest.approx(6.0 / 8)
    assert summary["reward_std"] == pytest.approx(math.sqrt(20.0 / 8 - (6.0 / 8) ** 2))


def test_padding_efficiency_is_a_ratio_of_sums():
    layout = objective("bradley_terry").layout
    one = layout.pack({"tokens": 30, "padded_tokens": 40})
    two = layout.pack({"tokens": 10, "padded_tokens": 60})
    # 40 real tokens in 100 slots, not the mean of 0.75 and 0.17.
    assert objective("bradley_terry").summarize(one + two)["padding_efficiency"] == pytest.approx(0.4)


def test_several_labels_give_a_reward_mean_and_std_per_label():
    regression = objective("regression", 2)
    rewards = torch.tensor([[1.0, -2.0], [3.0, 2.0], [2.0, 0.0]])
    summary = regression.summarize(regression.layout.pack({"documents": 3, "reward_sum": rewards.sum(0),
                                                           "reward_square_sum": (rewards ** 2).sum(0)}))
    assert summary["reward_mean"] == pytest.approx(rewards.mean(0).tolist())
    assert summary["reward_std"] == pytest.approx(rewards.std(0, correction=0).tolist())


def _split_in_two(store):
    """One padded batch of every group, the same groups as two micro-batches (2 and 4 pairs),
    and random rewards for the whole batch's documents (float64: sums in another order agree to 1e-12)."""
    whole = collate(store, range(len(GROUPS)), 0, packed=False)
    parts = [collate(store, [0, 1], 0, packed=False), collate(store, [2, 3], 0, packed=False)]
    generator = torch.Generator().manual_seed(5)
    rewards = torch.randn(whole.num_documents, 2, generator=generator, dtype=torch.float64)
    return whole, parts, rewards


@pytest.mark.parametrize("loss_type", ["bradley_terry", "regression"])
def test_micro_batch_sums_add_up_to_the_batch_holding_both(tmp_path, loss_type):
    store = make_store(tmp_path / "store", GROUPS, labels=LABELS)
    whole, parts, rewards = _split_in_two(store)
    num_labels = 2 if loss_type == "regression" else 1
    rewards = rewards[:, :num_labels]
    loss = objective(loss_type, num_labels)
    first = parts[0].num_documents
    summed = loss(parts[0], rewards[:first])[2]["sums"] + loss(parts[1], rewards[first:])[2]["sums"]
    from_parts, from_whole = loss.summarize(summed), loss.summarize(loss(whole, rewards)[2]["sums"])

    padded = sum(part.padded_tokens for part in parts)
    assert from_parts["padding_efficiency"] == pytest.approx(whole.tokens / padded)
    assert from_parts.keys() == from_whole.keys()
    for key in from_whole.keys() - {"padding_efficiency"}:
        assert from_parts[key] == pytest.approx(from_whole[key], rel=1e-12), key
    # and the whole equals plain means over every pair and document
    better, worse = whole.comparisons[:, 0], whole.comparisons[:, 1]
    chosen, rejected = rewards[better, 0], rewards[worse, 0]
    assert from_parts["pairs"] == 6 and from_parts["documents"] == 9 and from_parts["tokens"] == whole.tokens
    assert from_parts["accuracy"] == pytest.approx((chosen > rejected).double().mean().item())
    assert from_parts["margin"] == pytest.approx((chosen - rejected).double().mean().item())
    assert from_parts["squared_lengths"] == float((whole.attention_mask.sum(-1).double() ** 2).sum())
    expected_loss = {
        "bradley_terry": lambda: losses.bradley_terry_loss(chosen, rejected).double().mean().item(),
        "regression": lambda: ((rewards - whole.labels) ** 2).nanmean().item(),
    }[loss_type]()
    assert from_parts["loss"] == pytest.approx(expected_loss, rel=1e-6)
    mean = rewards.double().mean(0).tolist()
    assert from_parts["reward_mean"] == pytest.approx(mean[0] if num_labels == 1 else mean)


def _single_responses(store) -> list[Batch]:
    """The same single-response documents with their group metadata (no comparisons) and without."""
    with_groups = collate(store, range(len(SINGLES)), 0, packed=False)
    assert with_groups.comparisons.shape == (0, 2)
    plain = Batch(with_groups.input_ids, with_groups.attention_mask, labels=with_groups.labels)
    return [with_groups, plain]


def test_single_responses_under_regression_have_a_loss_and_no_pair_metrics(single_rank, tmp_path):
    store = make_store(tmp_path / "singles", SINGLES, labels=SINGLE_LABELS)
    regression = objective("regression")
    model = tiny_model()
    for batch in _single_responses(store):
        rewards = regression.forward(model, batch)
        loss_sum, terms, extra = regression(batch, rewards)
        summary = regression.summarize(extra["sums"])
        assert not set(PAIR_METRICS) & summary.keys()
        labelled = ~torch.isnan(batch.labels[:, 0])
        expected = ((rewards.detach()[labelled] - batch.labels[labelled]) ** 2).mean()
        assert int(terms) == 3 and summary["loss"] == pytest.approx(float(expected), rel=1e-6)
        assert summary["documents"] == 4
        assert summary["reward_mean"] == pytest.approx(float(rewards.detach().mean()), rel=1e-6)
        loss_sum.backward()


@pytest.mark.parametrize("loss_type", ["bradley_terry", "margin", "plackett_luce", "divergence"])
def test_single_responses_under_a_ranking_loss_have_no_loss_and_no_pair_metrics(single_rank, tmp_path, loss_type):
    store = make_store(tmp_path / "singles", SINGLES, labels=SINGLE_LABELS)
    ranking = objective(loss_type)
    model = tiny_model()
    for batch in _single_responses(store):
        output = ranking.forward(model, batch)
        loss_sum, terms, extra = ranking(batch, output)
        assert float(loss_sum.detach()) == 0.0 and int(terms) == 0
        summary = ranking.summarize(extra["sums"])
        assert not {"loss", *PAIR_METRICS} & summary.keys()
        assert summary["documents"] == 4 and math.isfinite(summary["reward_mean"])
        assert math.isnan(ranking.loss_of(extra["sums"]))
        loss_sum.backward()  # still part of the graph: backward runs, every gradient 0
        assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)
        model.zero_grad()


def test_training_flops_from_the_layers_and_squared_lengths(single_rank):
    cfg = tiny_model_config()
    model = tiny_model()
    matrices = sum(p.numel() for name, p in model.named_parameters() if name.startswith("decoder.layers.")
                   and p.dim() == 2)
    assert flops.dense_weights(cfg) == matrices
    # One 10-token document: 3 x (2 x 10 x P + 2 x L x a x d x 10 x 11).
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected = 3 * (2 * 10 * matrices + 2 * cfg.num_layers * cfg.num_attention_heads * head_dim * 110)
    assert flops.training_flops(cfg, tokens=10, squared_lengths=100) == expected
