"""Pairwise metrics as sums, so they reduce exactly across micro-batches and ranks.

A rank (or micro-batch) reports `pair_sums`; sums add up element-wise across
micro-batches and data-parallel ranks; `summarize` divides by the total number
of pairs once at the end. Averaging per-rank means instead would weight a rank
with few pairs like one with many.
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
