"""Advantages from groups of responses to one prompt (the GRPO family), and how a per-token loss
becomes the global batch's loss, as plain functions on tensors.

A group is the responses sampled for one prompt in one step, named by an integer per response
(`groups`): two identical prompts in one step are two groups. A NaN score (a reward function
that returned None) is left out of its group's statistics and gets advantage 0. Statistics are
float64 sums per group, so they do not depend on the order of the responses.
"""

from __future__ import annotations

import torch

GROUP_ESTIMATORS = ("grpo", "rloo")
GROUP_SCALES = ("std", "none")


def group_advantages(scores: torch.Tensor, groups: torch.Tensor, estimator: str = "grpo", *, scale: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """(responses,) each response's advantage against its group, float64.

    - `"grpo"`: r_i - mean of the group, divided by the group's sample std (Bessel's, as verl,
      OpenRLHF, NeMo-RL and TRL) plus `eps` (verl's 1e-6, outside the square root) when
      `scale="std"`; not divided when `scale="none"` (Dr. GRPO).
    - `"rloo"`: r_i - mean of the group's other responses, i.e. G/(G-1) (r_i - mean), never
      divided (as verl, OpenRLHF and TRL; `scale` is GRPO's only).

    A group with one scored response has no baseline to compare with: its advantage is 0 (as
    verl's vectorised RLOO and NeMo-RL; verl's GRPO would pass the raw score through).
    """
    _choice("group estimator", estimator, GROUP_ESTIMATORS)
    _choice("scale", scale, GROUP_SCALES)
    if scores.shape != groups.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and groups {tuple(groups.shape)}: one value per response")
    scored = ~torch.isnan(scores)
    _, member = torch.unique(groups, return_inverse=True)

    def per_group(values: torch.Tensor) -> torch.Tensor:  # each response's group sum of `values`
        sums = torch.zeros(int(member.max()) + 1 if len(member) else 0, dtype=torch.float64, device=scores.device)
        return sums.index_add_(0, member, values)[member]

    n = per_group(scored.double())
    # Centred before squaring: a group of equal scores has variance exactly 0, not E[x^2] - E[x]^2's
    # rounding residue (which NeMo-RL's users saw blow a leave-one-out std up to -2075).
    values = torch.where(scored, scores.double(), 0.0)
    centred = torch.where(scored, values - per_group(values) / n.clamp(min=1), 0.0)
    advantages = centred
    if estimator == "rloo":
        advantages = advantages * n / (n - 1).clamp(min=1)
    elif scale == "std":
        std = (per_group(centred.square()) / (n - 1).clamp(min=1)).sqrt()
        advantages = advantages / (std + eps)
    return torch.where(scored & (n > 1), advantages, 0.0)


def _token_mean(sums, tokens, norm):
    return sums.sum(), tokens.sum()


def _seq_mean_token_mean(sums, tokens, norm):
    return (sums / tokens.clamp(min=1)).sum(), (tokens > 0).sum()


def _seq_mean_token_sum(sums, tokens, norm):
    return sums.sum(), torch.tensor(sums.numel(), device=sums.device)


def _seq_mean_token_sum_norm(sums, tokens, norm):
    if norm is None or not norm > 0:
        raise ValueError(f"seq_mean_token_sum_norm needs a norm > 0 (the longest response allowed), got {norm!r}")
    return sums.sum() / norm, torch.tensor(sums.numel(), device=sums.device)


# name -> fn(each response's token sum, its token count, norm) -> (numerator, denominator)
LOSS_AGGREGATIONS = {"token_mean": _token_mean, "seq_mean_token_mean": _seq_mean_token_mean,
                     "seq_mean_token_sum": _seq_mean_token_sum, "seq_mean_token_sum_norm": _seq_mean_token_sum_norm}


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
                   norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, denominator) of a (responses, positions) per-token loss over the masked tokens:
    sums, so the global batch's loss is sum(numerators) / sum(denominators) over every micro-batch
    and data-parallel rank (megatron's per-token loss normalisation), whatever the split.

    - `token_mean`: every token weighs alike (DAPO, verl's default);
    - `seq_mean_token_mean`: each response's token mean, averaged over responses with a token
      (the GRPO paper);
    - `seq_mean_token_sum`: each response's token sum, averaged over responses;
    - `seq_mean_token_sum_norm`: token sums divided by the constant `norm` (the longest response
      allowed), averaged over responses (Dr. GRPO, TRL's `dr_grpo`).
    """
    _choice("loss aggregation", mode, LOSS_AGGREGATIONS)
    valid = mask.bool()
    return LOSS_AGGREGATIONS[mode](torch.where(valid, per_token, 0.0).sum(-1), valid.sum(-1), norm)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} must be one of {', '.join(allowed)}")
