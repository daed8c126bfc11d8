"""Preference losses: pure functions on reward tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair -log sigmoid(r_chosen - r_rejected).

    `logsigmoid` stays finite for any margin: about -margin for a large negative
    margin and exp(-margin) for a large positive one, where log(sigmoid(x))
    would round to log(0) or log(1).
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards)
