"""Preference losses: pure functions on reward tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair -log sigmoid(r_chosen - r_rejected - margin).

    The margin (Llama 2's preference-strength margin; 0 without one) asks the
    chosen reward to lead by at least that much before the loss fades.

    `logsigmoid` stays finite for any margin: about -margin for a large negative
    margin and exp(-margin) for a large positive one, where log(sigmoid(x))
    would round to log(0) or log(1).
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)
