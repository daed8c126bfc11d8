"""Tests for the summed pairwise metrics in megatron_rm.metrics."""

import math

import pytest
import torch

from megatron_rm.losses import bradley_terry_loss
from megatron_rm.metrics import (SUM_FIELDS, calibration_sums, expected_calibration_error, pair_sums,
                                 reward_mean_std, reward_moment_sums, summarize)


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


# --- calibration -----------------------------------------------------------------------


def reference_calibration(chosen: list[float], rejected: list[float], bins: int = 10):
    """Per-bin (count, confidence sum, correct sum) and the ECE, one pair at a time."""
    table = [[0, 0.0, 0] for _ in range(bins)]
    for c, r in zip(chosen, rejected):
        p = 1.0 / (1.0 + math.exp(-(c - r)))
        confidence = max(p, 1.0 - p)
        b = min(int((confidence - 0.5) / (0.5 / bins)), bins - 1)
        table[b][0] += 1
        table[b][1] += confidence
        table[b][2] += 1 if c > r else 0
    total = sum(n for n, _, _ in table)
    ece = sum(n / total * abs(right / n - conf / n) for n, conf, right in table if n)
    return table, ece


def test_calibration_matches_reference():
    generator = torch.Generator().manual_seed(12)
    chosen = torch.randn(400, generator=generator) * 2 + 0.5
    rejected = torch.randn(400, generator=generator) * 2
    sums = calibration_sums(chosen, rejected)
    assert sums.dtype == torch.float64 and sums.shape == (30,)
    table, ece = reference_calibration(chosen.tolist(), rejected.tolist())
    torch.testing.assert_close(sums.view(10, 3), torch.tensor(table, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert expected_calibration_error(sums) == pytest.approx(ece, rel=1e-12)
    assert sum(n for n, _, _ in table[:3]) > 0 and table[9][0] > 0  # the sample spans several bins


def test_perfectly_calibrated_case_has_zero_ece():
    # |r_c - r_r| = log 4 gives confidence 0.8: 8 of 10 right. log 1.5 gives 0.6: 3 of 5 right.
    sure, unsure = math.log(4.0), math.log(1.5)
    differences = [sure] * 8 + [-sure] * 2 + [unsure] * 3 + [-unsure] * 2
    chosen = torch.tensor(differences, dtype=torch.float64)
    sums = calibration_sums(chosen, torch.zeros_like(chosen))
    assert sums.view(10, 3)[:, 0].tolist() == [0, 0, 5, 0, 0, 0, 10, 0, 0, 0]
    assert expected_calibration_error(sums) == pytest.approx(0.0, abs=1e-12)


def test_ties_are_wrong_picks_at_confidence_one_half():
    rewards = torch.tensor([0.3, -2.0, 5.0])
    sums = calibration_sums(rewards, rewards.clone())
    assert sums[:3].tolist() == [3.0, 1.5, 0.0]
    assert expected_calibration_error(sums) == pytest.approx(0.5)


def test_certain_pairs_fall_in_the_last_bin():
    chosen = torch.tensor([1e3, -1e3], dtype=torch.float64)  # sigmoid rounds to exactly 1.0
    sums = calibration_sums(chosen, torch.zeros_like(chosen), bins=4)
    assert sums.view(4, 3)[-1].tolist() == [2.0, 2.0, 1.0]
    assert expected_calibration_error(sums) == pytest.approx(0.5)


def test_calibration_sums_of_halves_add_up_to_the_whole():
    generator = torch.Generator().manual_seed(13)
    chosen, rejected = torch.randn(101, generator=generator), torch.randn(101, generator=generator)
    whole = calibration_sums(chosen, rejected)
    halves = calibration_sums(chosen[:40], rejected[:40]) + calibration_sums(chosen[40:], rejected[40:])
    torch.testing.assert_close(halves, whole, rtol=1e-12, atol=1e-12)
    assert expected_calibration_error(halves) == pytest.approx(expected_calibration_error(whole), rel=1e-12)


def test_ece_of_no_pairs_is_nan():
    assert math.isnan(expected_calibration_error(calibration_sums(torch.zeros(0), torch.zeros(0))))


# --- reward moments --------------------------------------------------------------------


def test_reward_mean_std_equal_torchs_on_the_concatenation():
    generator = torch.Generator().manual_seed(14)
    rewards = torch.randn(37, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 2.0
    parts = [rewards[:5], rewards[5:30], rewards[30:]]
    summed = sum(reward_moment_sums(part) for part in parts)
    whole = reward_moment_sums(rewards)
    assert whole.dtype == torch.float64 and whole.shape == (7,)
    torch.testing.assert_close(summed, whole, rtol=1e-12, atol=1e-12)
    mean, std = reward_mean_std(summed, num_labels=3)
    assert mean == pytest.approx(rewards.mean(dim=0).tolist(), rel=1e-12)
    assert std == pytest.approx(rewards.std(dim=0, correction=0).tolist(), rel=1e-9)


def test_reward_std_of_equal_rewards_is_zero_not_nan():
    mean, std = reward_mean_std(reward_moment_sums(torch.full((1000, 1), 0.1)), num_labels=1)
    assert mean[0] == pytest.approx(0.1) and std[0] == pytest.approx(0.0, abs=1e-6)


def test_reward_mean_std_rejects_sums_for_another_label_count():
    with pytest.raises(ValueError):
        reward_mean_std(reward_moment_sums(torch.zeros(4, 2)), num_labels=1)
