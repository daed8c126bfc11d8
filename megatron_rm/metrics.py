"""Pairwise metrics as sums, so they reduce exactly across micro-batches and ranks.

A rank (or micro-batch) reports `pair_sums`; sums add up element-wise across
micro-batches and data-parallel ranks; `summarize` divides by the total number
of pairs once at the end. Averaging per-rank means instead would weight a rank
with few pairs like one with many. `calibration_sums` and `reward_moment_sums`
follow the same rule: counts and sums, divided only at the end.
"""

from __future__ import annotations

import torch

SUM_FIELDS = ("pairs", "tokens", "padded_tokens", "loss", "correct", "margin", "chosen_reward", "rejected_reward")


def pair_sums(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    per_pair_loss: torch.Tensor,
    tokens: int | torch.Tensor = 0,
    padded_tokens: int | torch.Tensor = 0,
) -> torch.Tensor:
    """float64 vector of sums, ordered as SUM_FIELDS. A tie counts as wrong."""
    chosen = chosen_rewards.detach().double()
    rejected = rejected_rewards.detach().double()
    return torch.stack([
        torch.tensor(float(chosen.numel()), dtype=torch.float64, device=chosen.device),
        torch.as_tensor(tokens, dtype=torch.float64, device=chosen.device),
        torch.as_tensor(padded_tokens, dtype=torch.float64, device=chosen.device),
        per_pair_loss.detach().double().sum(),
        (chosen > rejected).double().sum(),
        (chosen - rejected).sum(),
        chosen.sum(),
        rejected.sum(),
    ])


def summarize(sums: torch.Tensor) -> dict[str, float]:
    """Means per pair (accuracy, margin, rewards, loss) from summed SUM_FIELDS."""
    values = dict(zip(SUM_FIELDS, sums.tolist()))
    pairs = values["pairs"]
    if pairs == 0:
        raise ValueError("no pairs to summarize")
    return {
        "pairs": int(pairs),
        "tokens": int(values["tokens"]),
        # Real tokens over the token slots the model processed: what batching wasted on padding.
        "padding_efficiency": values["tokens"] / values["padded_tokens"] if values["padded_tokens"] else 1.0,
        "loss": values["loss"] / pairs,
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


def reward_moment_sums(rewards: torch.Tensor) -> torch.Tensor:
    """float64 (1 + 2 * labels,): [documents, per-label sum, per-label sum of squares].

    `rewards` is (docs, labels); a 1-D tensor counts as one label.
    """
    values = rewards.detach().double()
    if values.dim() == 1:
        values = values[:, None]
    count = torch.tensor([float(values.shape[0])], dtype=torch.float64, device=values.device)
    return torch.cat([count, values.sum(dim=0), (values ** 2).sum(dim=0)])


def reward_mean_std(sums: torch.Tensor, num_labels: int) -> tuple[list[float], list[float]]:
    """Per-label mean and population std (divided by N) from summed `reward_moment_sums`.

    NaN for both when there are no documents.
    """
    if sums.numel() != 1 + 2 * num_labels:
        raise ValueError(f"reward moment sums for {num_labels} labels hold {1 + 2 * num_labels} values, "
                         f"got {sums.numel()}")
    values = sums.double().cpu()
    count = float(values[0])
    if count == 0:
        return [float("nan")] * num_labels, [float("nan")] * num_labels
    mean = values[1:1 + num_labels] / count
    # E[x^2] - E[x]^2 can round a tiny bit below zero when every reward is (nearly) equal.
    variance = (values[1 + num_labels:] / count - mean ** 2).clamp(min=0.0)
    return mean.tolist(), variance.sqrt().tolist()
