"""Tests for the summed pairwise metrics in megatron_rm.metrics."""

import pytest
import torch

from megatron_rm.losses import bradley_terry_loss
from megatron_rm.metrics import SUM_FIELDS, pair_sums, summarize


def field(sums: torch.Tensor, name: str) -> float:
    return sums[SUM_FIELDS.index(name)].item()


def test_pair_sums_is_float64_vector_ordered_as_sum_fields():
    chosen = torch.tensor([2.0, 1.0, 0.5])
    rejected = torch.tensor([1.0, 1.0, 1.5])
    loss = torch.tensor([0.25, 0.5, 1.0])
    sums = pair_sums(chosen, rejected, loss, tokens=11)
    assert sums.dtype == torch.float64
    assert sums.shape == (len(SUM_FIELDS),)
    assert field(sums, "pairs") == 3
    assert field(sums, "tokens") == 11
    assert field(sums, "loss") == pytest.approx(1.75)
    assert field(sums, "correct") == 1  # only 2.0 > 1.0; the tie does not count
    assert field(sums, "margin") == pytest.approx(1.0 + 0.0 - 1.0)
    assert field(sums, "chosen_reward") == pytest.approx(3.5)
    assert field(sums, "rejected_reward") == pytest.approx(3.5)


def test_summarize_hand_computed_example_with_tie_counted_wrong():
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0])
    rejected = torch.tensor([1.0, 1.0, 1.5, -1.0])  # right, tie, wrong, right
    per_pair_loss = torch.tensor([0.1, 0.2, 0.3, 0.4])
    summary = summarize(pair_sums(chosen, rejected, per_pair_loss, tokens=37))
    assert summary["pairs"] == 4
    assert summary["tokens"] == 37
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["margin"] == pytest.approx((1.0 + 0.0 - 1.0 + 4.0) / 4)
    assert summary["chosen_reward"] == pytest.approx((2.0 + 1.0 + 0.5 + 3.0) / 4)
    assert summary["rejected_reward"] == pytest.approx((1.0 + 1.0 + 1.5 - 1.0) / 4)
    assert summary["loss"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)


def test_all_ties_give_zero_accuracy():
    rewards = torch.tensor([0.3, -2.0, 5.0])
    summary = summarize(pair_sums(rewards, rewards.clone(), bradley_terry_loss(rewards, rewards)))
    assert summary["accuracy"] == 0.0
    assert summary["margin"] == 0.0


def test_tokens_may_be_a_tensor():
    chosen = torch.tensor([1.0])
    rejected = torch.tensor([0.0])
    summary = summarize(pair_sums(chosen, rejected, torch.tensor([0.5]), tokens=torch.tensor(9)))
    assert summary["tokens"] == 9


def test_pair_sums_does_not_track_gradients():
    chosen = torch.tensor([1.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 3.0], requires_grad=True)
    sums = pair_sums(chosen, rejected, bradley_terry_loss(chosen, rejected))
    assert not sums.requires_grad


def _random_pairs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randn(n, generator=generator)
    rejected = torch.randn(n, generator=generator)
    tokens = torch.randint(5, 50, (n,), generator=generator)
    return chosen, rejected, tokens


def test_sums_over_uneven_ranks_equal_the_whole_set():
    chosen, rejected, tokens = _random_pairs(10, seed=3)
    loss = bradley_terry_loss(chosen, rejected)
    whole = summarize(pair_sums(chosen, rejected, loss, tokens=int(tokens.sum())))

    ranks = [slice(0, 3), slice(3, 10)]  # 3 pairs and 7 pairs
    total = sum(pair_sums(chosen[s], rejected[s], loss[s], tokens=int(tokens[s].sum())) for s in ranks)
    reduced = summarize(total)

    assert reduced["pairs"] == whole["pairs"] == 10
    assert reduced["tokens"] == whole["tokens"] == int(tokens.sum())
    for key in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward"):
        assert reduced[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-12)
    # and the whole equals plain per-pair means computed directly
    assert whole["accuracy"] == pytest.approx((chosen > rejected).double().mean().item())
    assert whole["loss"] == pytest.approx(loss.double().mean().item())


def test_reduction_weights_by_pairs_not_mean_of_rank_means():
    # rank A: 3 pairs, all right; rank B: 7 pairs, 1 right.
    chosen_a, rejected_a = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    chosen_b = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    rejected_b = torch.zeros(7)
    sums_a = pair_sums(chosen_a, rejected_a, bradley_terry_loss(chosen_a, rejected_a))
    sums_b = pair_sums(chosen_b, rejected_b, bradley_terry_loss(chosen_b, rejected_b))

    reduced = summarize(sums_a + sums_b)
    mean_of_means = (summarize(sums_a)["accuracy"] + summarize(sums_b)["accuracy"]) / 2

    assert reduced["accuracy"] == pytest.approx((3 + 1) / 10)
    assert mean_of_means == pytest.approx((3 / 3 + 1 / 7) / 2)
    assert reduced["accuracy"] != pytest.approx(mean_of_means)


def test_summarize_zero_pairs_raises():
    with pytest.raises(ValueError):
        summarize(torch.zeros(len(SUM_FIELDS), dtype=torch.float64))


def test_summarize_of_empty_micro_batch_raises():
    empty = torch.zeros(0)
    with pytest.raises(ValueError):
        summarize(pair_sums(empty, empty, empty))


def test_padding_efficiency_is_a_ratio_of_sums():
    one = pair_sums(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.3]), tokens=30, padded_tokens=40)
    two = pair_sums(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.3]), tokens=10, padded_tokens=60)
    # 40 real tokens in 100 slots, not the mean of 0.75 and 0.17.
    assert summarize(one + two)["padding_efficiency"] == pytest.approx(0.4)
