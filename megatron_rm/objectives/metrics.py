"""Metrics as named sums, so they reduce exactly across micro-batches and ranks.

A micro-batch reports sums (counts, sums of values, sums of squares) under
field names; a `runtime.sums.SumLayout` lays the fields out in one float64 vector,
which adds up element-wise across micro-batches and data-parallel ranks in a single
all-reduce; means are divided by the total count once at the end. Averaging
per-rank means instead would weight a rank with few pairs like one with many.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from megatron_rm.runtime.sums import mean_variance, moment_sums

PAIR_FIELDS = {"pairs": 1, "correct": 1, "margin": 1, "chosen_reward": 1, "rejected_reward": 1}
"""The fields of `pair_sums`, each one value wide."""


def pair_sums(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over pairs, named as PAIR_FIELDS (float64, no gradient). A tie counts as wrong."""
    chosen = chosen_rewards.detach().double()
    rejected = rejected_rewards.detach().double()
    return {
        "pairs": torch.tensor(float(chosen.numel()), dtype=torch.float64, device=chosen.device),
        "correct": (chosen > rejected).double().sum(),
        "margin": (chosen - rejected).sum(),
        "chosen_reward": chosen.sum(),
        "rejected_reward": rejected.sum(),
    }


def summarize(sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Means per pair (accuracy, margin, rewards) from summed PAIR_FIELDS.

    Empty without pairs: data of single responses has no pair to measure.
    """
    values = {name: float(sums[name]) for name in PAIR_FIELDS}
    pairs = values["pairs"]
    if pairs == 0:
        return {}
    return {
        "pairs": int(pairs),
        "accuracy": values["correct"] / pairs,
        "margin": values["margin"] / pairs,
        "chosen_reward": values["chosen_reward"] / pairs,
        "rejected_reward": values["rejected_reward"] / pairs,
    }


def calibration_sums(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """float64 (3 * bins,) calibration sums; bin b holds [count, sum of confidence, sum of correct]
    at indices 3b, 3b + 1, 3b + 2.

    p = sigmoid(r_c - r_r) is the model's probability that the chosen response
    is better. Its pick is the chosen one when r_c > r_r, so confidence =
    max(p, 1 - p) in [0.5, 1] and correct = (r_c > r_r) (a tie is a wrong pick,
    as in accuracy). Bins split [0.5, 1.0] into `bins` equal widths; confidence
    1.0 falls in the last bin.
    """
    difference = chosen_rewards.detach().double() - rejected_rewards.detach().double()
    # max(p, 1 - p) = sigmoid(|difference|): no 1 - p cancellation near p = 1.
    confidence = torch.sigmoid(difference.abs())
    correct = (difference > 0).double()
    bin_index = ((confidence - 0.5) * (2 * bins)).floor().long().clamp(0, bins - 1)
    per_doc = torch.stack([torch.ones_like(confidence), confidence, correct], dim=1)
    sums = torch.zeros(bins, 3, dtype=torch.float64, device=difference.device)
    return sums.index_add_(0, bin_index, per_doc).flatten()


def expected_calibration_error(sums: torch.Tensor) -> float:
    """sum_b (n_b / N) * |mean correct_b - mean confidence_b| from summed `calibration_sums`.

    Empty bins contribute 0; NaN when there are no pairs at all.
    """
    if sums.numel() % 3:
        raise ValueError(f"calibration sums hold 3 values per bin, got {sums.numel()} values")
    count, confidence, correct = sums.double().view(-1, 3).unbind(dim=1)
    total = float(count.sum())
    if total == 0:
        return float("nan")
    # (n_b / N) * |correct_b / n_b - confidence_b / n_b| = |correct_b - confidence_b| / N.
    return float((correct - confidence).abs().sum()) / total


def reward_moment_fields(num_labels: int) -> dict[str, int]:
    """The fields of `reward_moment_sums` for `num_labels` rewards per document."""
    return {"documents": 1, "reward_sum": num_labels, "reward_square_sum": num_labels}


def reward_moment_sums(rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64 documents, per-label sum and per-label sum of squares (`reward_moment_fields`).

    `rewards` is (docs, labels); a 1-D tensor counts as one label.
    """
    documents, reward_sum, reward_square_sum = moment_sums(rewards if rewards.dim() > 1 else rewards[:, None])
    return {"documents": documents, "reward_sum": reward_sum, "reward_square_sum": reward_square_sum}


def reward_mean_std(sums: Mapping[str, torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-label mean and population std (divided by N) from summed `reward_moment_sums`.

    NaN for both when there are no documents.
    """
    mean, variance = mean_variance(float(sums["documents"]), sums["reward_sum"].double().cpu(),
                                   sums["reward_square_sum"].double().cpu())
    return mean.tolist(), variance.sqrt().tolist()
