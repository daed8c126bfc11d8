"""The GRPO family's advantages and the loss aggregations, against the anchors' worked numbers
(verl, TRL, NeMo-RL; ../shared/research/rl-algorithms.md section 7) and a plain per-group loop."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from megatron_rm.ppo.groups import aggregate_loss, group_advantages

T = torch.tensor


def _reference(scores, groups, estimator, scale, eps):
    """Each response against the other scored responses of its group, one group at a time."""
    out = []
    for score, group in zip(scores, groups):
        mates = [s for s, g in zip(scores, groups) if g == group and not math.isnan(s)]
        if math.isnan(score) or len(mates) < 2:
            out.append(0.0)
            continue
        mean = sum(mates) / len(mates)
        advantage = score - mean
        if estimator == "rloo":
            advantage = score - (sum(mates) - score) / (len(mates) - 1)
        elif scale == "std":
            advantage /= statistics.stdev(mates) + eps
        out.append(advantage)
    return out


@pytest.mark.parametrize("scores, expected", [
    ([1, 0, 0, 0], [1.499997, -0.499999, -0.499999, -0.499999]),
    ([1, 1, 0, 0.5], [0.783348, 0.783348, -1.305580, -0.261116]),
])
def test_grpo_equals_verl(scores, expected):  # compute_grpo_outcome_advantage: Bessel std, eps 1e-6
    advantages = group_advantages(T(scores, dtype=torch.float32), T([7, 7, 7, 7]))
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)


def test_trl_eps_and_dr_grpo():
    scores, group = T([1.0, 0, 0, 0]), T([0, 0, 0, 0])
    assert group_advantages(scores, group, eps=1e-4).tolist() == pytest.approx([1.4997, -0.4999, -0.4999, -0.4999],
                                                                               abs=1e-4)
    assert group_advantages(scores, group, scale="none").tolist() == [0.75, -0.25, -0.25, -0.25]


@pytest.mark.parametrize("scores, expected", [
    ([1, 0, 0, 0], [1, -1 / 3, -1 / 3, -1 / 3]),
    ([1, 1, 0, 0.5], [0.5, 0.5, -0.833333, -0.166667]),
])
def test_rloo_equals_verl_and_trl(scores, expected):
    advantages = group_advantages(T(scores, dtype=torch.float64), T([0, 0, 0, 0]), "rloo")
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)


def test_equal_scores_give_exactly_zero():
    """No E[x^2] - E[x]^2 residue divided by a std of ~1e-9 (NeMo-RL PR #4158's -2075)."""
    for estimator in ("grpo", "rloo"):
        advantages = group_advantages(T([0.95] * 7, dtype=torch.float32), T([3] * 7), estimator)
        assert advantages.tolist() == [0.0] * 7


def test_a_missing_reward_and_a_lone_response_get_zero_and_leave_the_statistics():
    scores = T([1.0, math.nan, 0.0, 0.0, 0.0, 5.0])
    groups = T([0, 0, 0, 0, 0, 1])  # the last response is alone in its group
    advantages = group_advantages(scores, groups)
    expected = group_advantages(T([1.0, 0.0, 0.0, 0.0]), T([0, 0, 0, 0]))
    assert advantages.tolist() == [expected[0], 0.0, *expected[1:], 0.0]


@pytest.mark.parametrize("estimator, scale", [("grpo", "std"), ("grpo", "none"), ("rloo", "none")])
def test_groups_are_independent_of_order_and_match_a_plain_loop(estimator, scale):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(40, generator=generator, dtype=torch.float64)
    scores[torch.randperm(40, generator=generator)[:5]] = math.nan
    groups = torch.randint(0, 9, (40,), generator=generator) * 13  # ids need not be dense
    advantages = group_advantages(scores, groups, estimator, scale=scale)
    assert advantages.tolist() == pytest.approx(_reference(scores.tolist(), groups.tolist(), estimator, scale, 1e-6),
                                                abs=1e-12)
    order = torch.randperm(40, generator=generator)
    permuted = group_advantages(scores[order], groups[order], estimator, scale=scale)
    torch.testing.assert_close(permuted, advantages[order], rtol=0, atol=1e-14)


def _verl_593():
    """verl #593's two responses: five tokens of loss 2, and one token of loss 10."""
    loss, mask = torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.bool)
    loss[0, :5], mask[0, :5] = 2.0, True
    loss[1, 0], mask[1, 0] = 10.0, True
    loss[~mask] = 99.0  # padding never counts
    return loss, mask


@pytest.mark.parametrize("mode, norm, expected", [
    ("token_mean", None, 10 / 3),
    ("seq_mean_token_mean", None, 6.0),
    ("seq_mean_token_sum", None, 10.0),
    ("seq_mean_token_sum_norm", 10, 1.0),  # TRL's dr_grpo; verl's code gives 2.0 (#3741: not divided by responses)
])
def test_aggregations_on_verl_593_and_at_any_split(mode, norm, expected):
    loss, mask = _verl_593()
    numerator, denominator = aggregate_loss(loss, mask, mode, norm)
    assert float(numerator / denominator) == pytest.approx(expected)
    # One response per micro-batch (or per rank): the sums add up to the same loss.
    parts = [aggregate_loss(loss[i:i + 1], mask[i:i + 1], mode, norm) for i in range(2)]
    assert float(sum(n for n, _ in parts) / sum(d for _, d in parts)) == pytest.approx(expected)


def test_bad_names_and_norms_are_refused():
    with pytest.raises(ValueError, match="scale 'batch' must be one of std, none"):
        group_advantages(T([1.0]), T([0]), scale="batch")
    with pytest.raises(ValueError, match="group estimator 'gae' must be one of grpo, rloo"):
        group_advantages(T([1.0]), T([0]), "gae")
    loss, mask = _verl_593()
    with pytest.raises(ValueError, match="must be one of token_mean, seq_mean_token_mean"):
        aggregate_loss(loss, mask, "sum")
    with pytest.raises(ValueError, match="needs a norm > 0"):
        aggregate_loss(loss, mask, "seq_mean_token_sum_norm")
