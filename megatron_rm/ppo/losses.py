"""The actor's and the critic's losses, as (numerator, denominator) sums.

megatron's per-token loss normalisation (`calculate_per_token_loss`) divides the summed
numerators by the summed denominators of the whole global batch, over every micro-batch and
data-parallel rank. With the action tokens as the denominator a loss is the global batch's token
mean however it is split; `aggregate_loss` gives the other aggregations the same way (sequence
means, Dr. GRPO's constant norm). The statistics come back as sums too, divided by the action
tokens once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_rm.ppo.groups import aggregate_loss
from megatron_rm.ppo.kl import kl_loss


def _clipped(logprobs, ratio, advantages, settings):
    """PPO's clipped surrogate, the ratio clipped to [1 - clip, 1 + clip_high], with the dual clip."""
    unclipped = -advantages * ratio
    high = settings.clip if settings.clip_high is None else settings.clip_high
    clipped = -advantages * ratio.clamp(1.0 - settings.clip, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if settings.dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * settings.dual_clip), per_token)
    return per_token, clipped > unclipped


def _reinforce(logprobs, ratio, advantages, settings):
    """-A log pi: REINFORCE, no ratio and no clip (NeMo-RL's disable_ppo_ratio)."""
    return -advantages * logprobs, torch.zeros_like(logprobs, dtype=torch.bool)


# name -> fn(logprobs, ratio, advantages, settings) -> (per-token loss, where the clip was taken)
POLICY_LOSSES = {"clipped": _clipped, "reinforce": _reinforce}


@dataclass(frozen=True)
class PolicyLossSettings:
    kind: str = "clipped"
    """clipped: PPO's clipped surrogate; reinforce: -A * log pi (plain REINFORCE, no ratio)."""
    clip: float = 0.2
    """The ratio is clipped to [1 - clip, 1 + clip_high]."""
    clip_high: float | None = None
    """None: clip (a symmetric clip)."""
    dual_clip: float | None = None
    """With a negative advantage the loss is capped at -A * dual_clip (> 1; Ye et al. 2020); None: off."""
    entropy_coef: float = 0.0
    aggregation: str = "token_mean"
    """How the per-token losses become the batch's (`groups.aggregate_loss`)."""
    norm: float | None = None
    """The constant of `seq_mean_token_sum_norm` (the longest response allowed)."""
    kl_coef: float = 0.0
    """kl.placement=loss: the coefficient of the KL term added to each token's loss (0: none)."""
    kl_estimator: str = "k3"


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                settings: PolicyLossSettings = PolicyLossSettings(), entropy: torch.Tensor | None = None,
                ref_logprobs: torch.Tensor | None = None,
                token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(loss numerator, denominator, statistic sums) of the policy loss over the masked tokens.

    Each token's loss is the clipped surrogate (or REINFORCE's -A log pi), minus the entropy
    bonus, plus kl_coef times the KL to `ref_logprobs`; `settings.aggregation` makes them the
    batch's loss (the token mean by default, whose denominator is the token count).
    `token_weights` (no gradient) scale each token's loss before that: the importance weights of
    `rollout.is_correction`.

    Statistic sums over the masked tokens: `clipped` (tokens where the clipped branch was taken),
    `approx_kl` (k3 of the new policy against the old one), `tokens`, and `entropy` and `kl_loss`
    when they are computed. Before the first update logprobs equal old_logprobs bit for bit, so
    the ratio is exactly 1 and the first two are 0.
    """
    if settings.kind not in POLICY_LOSSES:
        raise ValueError(f"policy loss {settings.kind!r} must be one of {', '.join(POLICY_LOSSES)}")
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)
    per_token, took_clip = POLICY_LOSSES[settings.kind](logprobs, log_ratio.exp(), advantages, settings)
    if entropy is not None and settings.entropy_coef:
        per_token = per_token - settings.entropy_coef * entropy
    kl = None
    if settings.kl_coef:
        kl = kl_loss(logprobs, ref_logprobs, settings.kl_estimator)
        per_token = per_token + settings.kl_coef * kl
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    numerator, denominator = aggregate_loss(per_token, valid, settings.aggregation, settings.norm)
    with torch.no_grad():
        stats = {"clipped": (valid & took_clip).sum().double(),
                 "approx_kl": torch.where(valid, torch.expm1(-log_ratio) + log_ratio, 0.0).sum().double(),
                 "tokens": valid.sum().double()}
        if entropy is not None:
            stats["entropy"] = torch.where(valid, entropy, 0.0).sum().double()
        if kl is not None:
            stats["kl_loss"] = torch.where(valid, kl, 0.0).sum().double()
    return numerator, denominator, stats


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
    return loss, valid.sum(), {"clipped": (valid & clipped).sum().double(), "tokens": valid.sum().double()}
