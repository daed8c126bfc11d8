"""Tests for the summed metrics in megatron_rm.objectives.metrics: named fields, pairs, calibration, reward moments."""

import math

import pytest
import torch

from megatron_rm.objectives.metrics import (
    PAIR_FIELDS,
    calibration_sums,
    expected_calibration_error,
    pair_sums,
    reward_mean_std,
    reward_moment_fields,
    reward_moment_sums,
    summarize,
)
from megatron_rm.runtime.sums import SumLayout

# --- named fields ----------------------------------------------------------------------


def test_packed_fields_unpack_by_name():
    layout = SumLayout({"count": 1, "per_label": 3, "bins": 2})
    assert layout.size == 6
    sums = layout.pack({"per_label": torch.tensor([1.0, 2.0, 3.0]), "count": 7})
    assert sums.dtype == torch.float64 and sums.tolist() == [7.0, 1.0, 2.0, 3.0, 0.0, 0.0]  # bins not given: 0
    fields = layout.unpack(sums)
    assert list(fields) == ["count", "per_label", "bins"]
    assert fields["count"].tolist() == [7.0] and fields["per_label"].tolist() == [1.0, 2.0, 3.0]
    assert fields["bins"].tolist() == [0.0, 0.0]
    fields["bins"] += 1.0  # views into the vector
    assert sums[4:].tolist() == [1.0, 1.0]


def test_packed_sums_add_up_field_by_field():
    layout = SumLayout(PAIR_FIELDS)
    both = layout.pack({"pairs": 2, "margin": 0.5}) + layout.pack({"pairs": 3, "margin": 1.0})
    assert layout.unpack(both)["pairs"].item() == 5 and layout.unpack(both)["margin"].item() == 1.5


def test_values_may_be_numbers_or_tensors():
    layout = SumLayout({"tokens": 1, "loss": 1})
    assert layout.pack({"tokens": torch.tensor(9), "loss": 0.5}).tolist() == [9.0, 0.5]
    assert layout.pack({"tokens": 9}).tolist() == [9.0, 0.0]


def test_packing_does_not_track_gradients():
    loss = torch.tensor([0.5, 1.5], requires_grad=True).sum()
    assert not SumLayout({"loss": 1}).pack({"loss": loss}).requires_grad


def test_a_layout_refuses_unknown_fields_wrong_widths_and_other_vectors():
    layout = SumLayout({"pairs": 1, "calibration": 6})
    with pytest.raises(ValueError, match="'margin'"):
        layout.pack({"margin": 1.0})
    with pytest.raises(ValueError, match="'calibration' holds 6 values, got 3"):
        layout.pack({"calibration": torch.zeros(3)})
    with pytest.raises(ValueError, match="7 values"):
        layout.unpack(torch.zeros(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 1 value wide"):
        SumLayout({"pairs": 0})


# --- pairs -----------------------------------------------------------------------------


def field(sums: dict, name: str) -> float:
    return sums[name].item()


def test_pair_sums_are_float64_named_as_pair_fields():
    chosen = torch.tensor([2.0, 1.0, 0.5])
    rejected = torch.tensor([1.0, 1.0, 1.5])
    sums = pair_sums(chosen, rejected)
    assert sums.keys() == PAIR_FIELDS.keys()
    assert all(value.dtype == torch.float64 for value in sums.values())
    assert field(sums, "pairs") == 3
    assert field(sums, "correct") == 1  # only 2.0 > 1.0; the tie does not count
    assert field(sums, "margin") == pytest.approx(1.0 + 0.0 - 1.0)
    assert field(sums, "chosen_reward") == pytest.approx(3.5)
    assert field(sums, "rejected_reward") == pytest.approx(3.5)


def test_summarize_hand_computed_example_with_tie_counted_wrong():
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0])
    rejected = torch.tensor([1.0, 1.0, 1.5, -1.0])  # right, tie, wrong, right
    summary = summarize(pair_sums(chosen, rejected))
    assert summary["pairs"] == 4
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["margin"] == pytest.approx((1.0 + 0.0 - 1.0 + 4.0) / 4)
    assert summary["chosen_reward"] == pytest.approx((2.0 + 1.0 + 0.5 + 3.0) / 4)
    assert summary["rejected_reward"] == pytest.approx((1.0 + 1.0 + 1.5 - 1.0) / 4)


def test_all_ties_give_zero_accuracy():
    rewards = torch.tensor([0.3, -2.0, 5.0])
    summary = summarize(pair_sums(rewards, rewards.clone()))
    assert summary["accuracy"] == 0.0
    assert summary["margin"] == 0.0


def test_pair_sums_do_not_track_gradients():
    chosen = torch.tensor([1.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 3.0], requires_grad=True)
    assert not any(value.requires_grad for value in pair_sums(chosen, rejected).values())


def _random_pairs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=generator), torch.randn(n, generator=generator)


def test_sums_over_uneven_ranks_equal_the_whole_set():
    chosen, rejected = _random_pairs(10, seed=3)
    layout = SumLayout(PAIR_FIELDS)
    whole = summarize(pair_sums(chosen, rejected))

    ranks = [slice(0, 3), slice(3, 10)]  # 3 pairs and 7 pairs
    total = sum(layout.pack(pair_sums(chosen[s], rejected[s])) for s in ranks)
    reduced = summarize(layout.unpack(total))

    assert reduced["pairs"] == whole["pairs"] == 10
    for key in ("accuracy", "margin", "chosen_reward", "rejected_reward"):
        assert reduced[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-12)
    # and the whole equals plain per-pair means computed directly
    assert whole["accuracy"] == pytest.approx((chosen > rejected).double().mean().item())
    assert whole["margin"] == pytest.approx((chosen - rejected).double().mean().item())


def test_reduction_weights_by_pairs_not_mean_of_rank_means():
    # rank A: 3 pairs, all right; rank B: 7 pairs, 1 right.
    layout = SumLayout(PAIR_FIELDS)
    sums_a = layout.pack(pair_sums(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)))
    sums_b = layout.pack(pair_sums(torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]), torch.zeros(7)))

    reduced = summarize(layout.unpack(sums_a + sums_b))
    mean_of_means = (summarize(layout.unpack(sums_a))["accuracy"] + summarize(layout.unpack(sums_b))["accuracy"]) / 2

    assert reduced["accuracy"] == pytest.approx((3 + 1) / 10)
    assert mean_of_means == pytest.approx((3 / 3 + 1 / 7) / 2)
    assert reduced["accuracy"] != pytest.approx(mean_of_means)


def test_zero_pairs_summarize_to_no_pair_metrics():
    layout = SumLayout(PAIR_FIELDS)
    assert summarize(layout.unpack(torch.zeros(layout.size, dtype=torch.float64))) == {}


def test_an_empty_micro_batch_has_no_pair_metrics():
    empty = torch.zeros(0)
    assert summarize(pair_sums(empty, empty)) == {}


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
    layout = SumLayout(reward_moment_fields(3))
    parts = [rewards[:5], rewards[5:30], rewards[30:]]
    summed = sum(layout.pack(reward_moment_sums(part)) for part in parts)
    whole = reward_moment_sums(rewards)
    assert all(value.dtype == torch.float64 for value in whole.values())
    assert whole["documents"].item() == 37 and whole["reward_sum"].shape == whole["reward_square_sum"].shape == (3,)
    torch.testing.assert_close(summed, layout.pack(whole), rtol=1e-12, atol=1e-12)
    mean, std = reward_mean_std(layout.unpack(summed))
    assert mean == pytest.approx(rewards.mean(dim=0).tolist(), rel=1e-12)
    assert std == pytest.approx(rewards.std(dim=0, correction=0).tolist(), rel=1e-9)


def test_reward_std_of_equal_rewards_is_zero_not_nan():
    mean, std = reward_mean_std(reward_moment_sums(torch.full((1000, 1), 0.1)))
    assert mean[0] == pytest.approx(0.1) and std[0] == pytest.approx(0.0, abs=1e-6)


def test_reward_moments_of_no_documents_are_nan():
    mean, std = reward_mean_std(reward_moment_sums(torch.zeros(0, 2)))
    assert len(mean) == len(std) == 2 and all(math.isnan(v) for v in mean + std)


def test_reward_moments_for_another_label_count_do_not_fit_the_layout():
    with pytest.raises(ValueError):
        SumLayout(reward_moment_fields(1)).pack(reward_moment_sums(torch.zeros(4, 2)))
