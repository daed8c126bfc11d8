"""Advantage estimators (`algorithm.advantage`): one registered function per algorithm.

An estimator takes a replica's responses, micro-batch by micro-batch (`Responses`), and returns
each micro-batch's per-token advantages and, for an estimator with a critic, its returns. What
needs the whole step reduces over the data-parallel group: whitening all-reduces sums, and the
group statistics gather every response's score and group (a few numbers per response), since a
prompt's responses are spread over the replicas' mini-batch shares (`step.update_rows`).

- `gae` (needs a critic): KL-shaped token rewards, GAE, advantages whitened over the step (today's PPO).
- `grpo`: each response's score against its group's mean, divided by the group's std unless
  `algorithm.group_scale=none` (Dr. GRPO); the same advantage on every token.
- `rloo`: the score against the mean of the group's other responses (leave-one-out).
- `reinforce_pp`: KL-shaped token rewards, discounted returns, whitened over the step (REINFORCE++).
- `reinforce_pp_baseline`: the group's mean subtracted from each score first, then as `reinforce_pp`.

With `kl.placement=reward` the KL enters as each estimator's reward: per token for the
token-level ones, and summed over the response into its score for `grpo` and `rloo` (as verl's
`use_kl_in_reward` does), so `kl_coef` is 0 under the other placements. A NaN score (a reward
function's None) gets advantage 0 from the group estimators and counts as 0 for the others,
which leave that response out of the policy loss (`experience`).

Adding an algorithm is one function here under `@estimator(name, ...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.ppo.advantages import gae, token_rewards, whiten_together
from megatron_rm.ppo.groups import GROUP_SCALES, group_advantages


@dataclass
class Responses:
    """A replica's responses, one entry per micro-batch."""

    scores: list[torch.Tensor]
    """(rows,) each response's shaped score; NaN: no reward."""
    groups: list[torch.Tensor]
    """(rows,) each response's group (its prompt's position in the step)."""
    masks: list[torch.Tensor]
    """(rows, seq) bool: the action positions."""
    kl: list[torch.Tensor]
    """(rows, seq) the per-token KL estimate (0 without a reference forward)."""
    values: list[torch.Tensor] | None = None
    """(rows, seq) the critic's values; None without a critic."""


@dataclass(frozen=True)
class AdvantageSettings:
    kl_coef: float = 0.0
    """The KL coefficient in the reward (kl.placement=reward), else 0."""
    gamma: float = 1.0
    lam: float = 0.95
    group_scale: str = "std"
    std_eps: float = 1e-6


Estimate = tuple[list[torch.Tensor], list[torch.Tensor] | None]


@dataclass(frozen=True)
class Estimator:
    fn: Callable[[Responses, AdvantageSettings, object], Estimate]
    needs_critic: bool = False
    needs_groups: bool = False
    """Needs several responses per prompt (rollout.samples_per_prompt > 1)."""


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def estimator(name: str, *, needs_critic: bool = False, needs_groups: bool = False):
    """Register `fn(responses, settings, dp_group) -> (advantages, returns or None)` as `name`."""
    def register(fn):
        ADVANTAGE_ESTIMATORS[name] = Estimator(fn, needs_critic, needs_groups)
        return fn
    return register


def estimate(name: str, responses: Responses, settings: AdvantageSettings, dp_group=None) -> Estimate:
    return ADVANTAGE_ESTIMATORS[name].fn(responses, settings, dp_group)


def _scored(scores: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scores, nan=0.0)


@estimator("gae", needs_critic=True)
def _gae(r: Responses, s: AdvantageSettings, dp_group) -> Estimate:
    advantages, returns = [], []
    for scores, kl, mask, values in zip(r.scores, r.kl, r.masks, r.values):
        advantage, ret = gae(token_rewards(_scored(scores), kl, s.kl_coef, mask), values, mask, s.gamma, s.lam)
        advantages.append(advantage)
        returns.append(ret)
    return whiten_together(advantages, r.masks, dp_group), returns


def _over_the_step(scores: torch.Tensor, groups: torch.Tensor, dp_group, estimator_name: str, scale: str,
                   eps: float = 1e-6) -> torch.Tensor:
    """`group_advantages` of this replica's responses, with every replica's scores and groups in the
    statistics (each replica holds the same number of responses)."""
    if dp_group is None or dist.get_world_size(dp_group) == 1:
        return group_advantages(scores, groups, estimator_name, scale=scale, eps=eps)
    both = torch.stack([scores.double(), groups.double()]).to(runtime.device())
    gathered = [torch.empty_like(both) for _ in range(dist.get_world_size(dp_group))]
    dist.all_gather(gathered, both, group=dp_group)
    every = torch.cat(gathered, dim=1).cpu()
    rank = dist.get_rank(dp_group)
    advantages = group_advantages(every[0], every[1].long(), estimator_name, scale=scale, eps=eps)
    return advantages[rank * len(scores):(rank + 1) * len(scores)]


def _sequence_advantages(r: Responses, s: AdvantageSettings, dp_group, estimator_name: str,
                         scale: str) -> list[torch.Tensor]:
    """Each response's group advantage (`groups.group_advantages`) on its every action token,
    with the response's summed KL subtracted from its score first."""
    scores = [score - s.kl_coef * torch.where(mask, kl, 0.0).sum(-1)
              for score, kl, mask in zip(r.scores, r.kl, r.masks)]
    flat = _over_the_step(torch.cat(scores).cpu(), torch.cat(r.groups).cpu(), dp_group, estimator_name, scale,
                          s.std_eps)
    out, start = [], 0
    for score, mask in zip(scores, r.masks):
        rows = flat[start:start + len(score)].to(device=mask.device, dtype=torch.float32)
        out.append(torch.where(mask, rows[:, None], 0.0))
        start += len(score)
    return out


@estimator("grpo", needs_groups=True)
def _grpo(r: Responses, s: AdvantageSettings, dp_group) -> Estimate:
    if s.group_scale not in GROUP_SCALES:
        raise ValueError(f"group scale {s.group_scale!r} must be one of {', '.join(GROUP_SCALES)}")
    return _sequence_advantages(r, s, dp_group, "grpo", s.group_scale), None


@estimator("rloo", needs_groups=True)
def _rloo(r: Responses, s: AdvantageSettings, dp_group) -> Estimate:
    return _sequence_advantages(r, s, dp_group, "rloo", "none"), None


def _whitened_returns(scores: list[torch.Tensor], r: Responses, s: AdvantageSettings, dp_group) -> list[torch.Tensor]:
    """Discounted returns of the KL-shaped token rewards, whitened over every action token of the
    step (population variance, as OpenRLHF and NeMo-RL; verl's is Bessel's)."""
    returns = []
    for score, kl, mask in zip(scores, r.kl, r.masks):
        rewards = token_rewards(_scored(score), kl, s.kl_coef, mask)
        returns.append(gae(rewards, torch.zeros_like(rewards), mask, s.gamma, 1.0)[0])  # no values: the returns
    return whiten_together(returns, r.masks, dp_group)


@estimator("reinforce_pp")
def _reinforce_pp(r: Responses, s: AdvantageSettings, dp_group) -> Estimate:
    return _whitened_returns(r.scores, r, s, dp_group), None


@estimator("reinforce_pp_baseline", needs_groups=True)
def _reinforce_pp_baseline(r: Responses, s: AdvantageSettings, dp_group) -> Estimate:
    flat = _over_the_step(torch.cat(r.scores).cpu(), torch.cat(r.groups).cpu(), dp_group, "grpo", "none")
    centred = [part.to(device=score.device, dtype=torch.float32)
               for part, score in zip(flat.split([len(score) for score in r.scores]), r.scores)]
    return _whitened_returns(centred, r, s, dp_group), None
