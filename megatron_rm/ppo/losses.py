"""PPO's actor and critic losses, as (sum over action tokens, number of tokens) pairs.

megatron's per-token loss normalisation (`calculate_per_token_loss`) divides the summed loss by
the action tokens of the whole global batch, over every micro-batch and data-parallel rank, so
each loss is a token mean of the global batch however it is split. The statistics come back as
sums too, to be divided once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PolicyLossSettings:
    clip: float = 0.2
    """The ratio is clipped to [1 - clip, 1 + clip_high]."""
    clip_high: float | None = None
    """None: clip (a symmetric clip)."""
    dual_clip: float | None = None
    """With a negative advantage the loss is capped at -A * dual_clip (> 1; Ye et al. 2020); None: off."""
    entropy_coef: float = 0.0


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                settings: PolicyLossSettings = PolicyLossSettings(),
                entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(loss sum, token count, statistic sums) of the clipped surrogate over the masked tokens.

    Statistic sums: `clipped` (tokens where the clipped branch was taken), `approx_kl`
    (k3 of the new policy against the old one, summed) and `entropy` when given. Before the
    first update logprobs equal old_logprobs bit for bit, so the ratio is exactly 1 and both
    statistics are 0.
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    high = settings.clip if settings.clip_high is None else settings.clip_high
    clipped = -advantages * ratio.clamp(1.0 - settings.clip, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if settings.dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * settings.dual_clip), per_token)
    if entropy is not None and settings.entropy_coef:
        per_token = per_token - settings.entropy_coef * entropy
    loss = torch.where(valid, per_token, 0.0).sum()
    with torch.no_grad():
        stats = {"clipped": (valid & (clipped > unclipped)).sum().double(),
                 "approx_kl": torch.where(valid, torch.expm1(-log_ratio) + log_ratio, 0.0).sum().double()}
        if entropy is not None:
            stats["entropy"] = torch.where(valid, entropy, 0.0).sum().double()
    return loss, valid.sum(), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(loss sum, token count, statistic sums) of 0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)
    over the masked tokens (no clipping when `clip` is None). Statistic: `clipped` tokens."""
    valid = mask.bool()
    squared = (values - returns).square()
    if clip is None:
        per_token, clipped = squared, torch.zeros_like(valid)
    else:
        bounded = old_values + (values - old_values).clamp(-clip, clip)
        squared_clipped = (bounded - returns).square()
        per_token, clipped = torch.maximum(squared, squared_clipped), squared_clipped > squared
    loss = 0.5 * torch.where(valid, per_token, 0.0).sum()
    return loss, valid.sum(), {"clipped": (valid & clipped).sum().double()}
