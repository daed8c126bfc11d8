"""Token rewards, generalised advantage estimation and whitening over action tokens.

Tensors are (responses, positions) in log-probability space: position t is the action that
produced token t + 1, so a response's actions are a contiguous run of positions (from the
prompt's last token to the token before the last action's successor) and `mask` marks them.
Everything outside the mask (prompt, padding) is ignored: no value or reward there can change
a valid advantage or return.
"""

from __future__ import annotations

import torch

from megatron_rm.runtime.sums import moments


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """-kl_coef * kl on every action token, plus each response's score on its last action token
    (its EOS, or the last token of a response cut at max_new_tokens)."""
    rewards = torch.where(mask.bool(), -kl_coef * kl, 0.0)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(mask.bool(), positions, -1).max(-1).values
    has_actions = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_actions]
    rewards[rows, last[has_actions]] += scores[has_actions].to(rewards.dtype)
    return rewards


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) over each response's action tokens, 0 elsewhere.

    A_t = delta_t + gamma * lam * A_{t+1}, delta_t = r_t + gamma * V_{t+1} - V_t, where t + 1
    is the next action token (the value after the last action is 0: the episode ends there).
    Walking backwards, the next value and the running advantage carry over masked positions
    unchanged, so a mask with holes still chains a response's actions. returns = A + V.
    """
    valid = mask.bool()
    rewards, values = torch.where(valid, token_rewards, 0.0), torch.where(valid, values, 0.0)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        here = delta + gamma * lam * running
        running = torch.where(valid[:, t], here, running)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(valid[:, t], here, 0.0)
    return advantages, torch.where(valid, advantages + values, 0.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, group=None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """`x` standardised by the mean and (population) variance of its masked entries over every
    rank of `group` (the data-parallel group): sums and counts are all-reduced, so each rank's
    entries weigh by their number, however the batch is split. Masked-out entries become 0."""
    return whiten_together([x], [mask], group, shift_mean, eps)[0]


def whiten_together(xs: list[torch.Tensor], masks: list[torch.Tensor], group=None, shift_mean: bool = True,
                    eps: float = 1e-8) -> list[torch.Tensor]:
    """`whiten` with one mean and variance for the masked entries of every tensor in `xs`
    (a replica's micro-batches, each padded to its own width)."""
    summed = moments([x[mask.bool()] for x, mask in zip(xs, masks)], group)
    if summed.count == 0:
        return [torch.zeros_like(x) for x in xs]
    mean, scale = summed.mean, (summed.variance + eps) ** -0.5
    out = []
    for x, mask in zip(xs, masks):
        whitened = (x - mean) * scale + (0.0 if shift_mean else mean)
        out.append(torch.where(mask.bool(), whitened, 0.0))
    return out
