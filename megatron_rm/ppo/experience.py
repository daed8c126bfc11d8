"""From sampled responses to what the update trains on: documents, shaped scores, and the
advantages (and a critic's returns) of the run's estimator (`estimators`).

Responses without EOS (cut at max_new_tokens) follow `no_eos`:
- `mask` (the default, as NeMo-Aligner): the reward model still scores the response at its
  last token and the critic still learns from it, but it is left out of the policy loss, so
  the actor is never pushed toward a response whose reward was read mid-sentence;
- `penalty` (as Ziegler et al.): its score is replaced by `no_eos_penalty` and it trains like
  any other response, which teaches the actor to finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_rm.data import Batch, document_batch
from megatron_rm.generation.generator import EOS, Completion
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.estimators import ADVANTAGE_ESTIMATORS, AdvantageSettings, Responses, estimate
from megatron_rm.ppo.kl import kl_penalty, mean_per_token
from megatron_rm.ppo.objectives import Rollouts

NO_EOS_POLICIES = ("mask", "penalty")


@dataclass(frozen=True)
class Shaping:
    """How reward-model scores become PPO scores."""

    clip: float | None = None
    """Scores are clipped to [-clip, clip] (OpenRLHF's reward clip); None: not clipped."""
    no_eos: str = "mask"
    no_eos_penalty: float = -1.0
    """The score of a response without EOS under no_eos=penalty."""
    max_new_tokens: int = 0
    overlong_buffer: int = 0
    """DAPO's overlong shaping (0: off): a response longer than max_new_tokens - overlong_buffer
    loses overlong_penalty x its excess / overlong_buffer (verl's and NeMo-RL's formula)."""
    overlong_penalty: float = 1.0


def documents(prompts: list[list[int]], completions: list[Completion], pad_id: int) -> tuple[Batch, torch.Tensor]:
    """Prompt + response of each completion as one padded batch with its response mask, and
    whether each response ended with a stop token."""
    batch = document_batch([p + c.token_ids for p, c in zip(prompts, completions)], pad_id,
                           prompt_lengths=[len(p) for p in prompts])
    return batch, torch.tensor([c.finish_reason == EOS for c in completions])


def engine_logprobs(batch: Batch, completions: list[Completion]) -> torch.Tensor:
    """(rows, seq) in log-probability space (`documents`' batch of `completions`): each response
    token's log-probability as the engine that sampled it reported it; 0 elsewhere."""
    _, mask = next_token_targets(batch)
    reported = torch.zeros(mask.shape)
    reported[mask] = torch.tensor([logprob for completion in completions for logprob in completion.logprobs])
    return reported


def shaped_scores(scores: torch.Tensor, ended: torch.Tensor, shaping: Shaping,
                  lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores as the estimator takes them, which responses the policy loss may learn from);
    `lengths`: each response's tokens (its stop token included), for the overlong shaping."""
    if shaping.clip is not None:
        scores = scores.clamp(-shaping.clip, shaping.clip)
    if shaping.overlong_buffer:
        excess = lengths.to(scores.dtype) - (shaping.max_new_tokens - shaping.overlong_buffer)
        scores = scores + (-excess / shaping.overlong_buffer * shaping.overlong_penalty).clamp(
            -shaping.overlong_penalty, 0.0)
    if shaping.no_eos == "penalty":
        return torch.where(ended, scores, torch.full_like(scores, shaping.no_eos_penalty)), torch.ones_like(ended)
    return scores, ended


@dataclass
class Scored:
    """One micro-batch of responses after the rollout forwards. Per-position tensors are
    (rows, seq) in log-probability space, laid out as `batch`."""

    batch: Batch
    old_logprobs: torch.Tensor | None
    """None when the step makes one update: the update's own, detached (`forwards.RolloutModels`)."""
    ref_logprobs: torch.Tensor | None
    """None when nothing needs the reference policy (kl.placement=none)."""
    values: torch.Tensor | None
    """None without a critic."""
    scores: torch.Tensor
    """(rows,) shaped scores (`shaped_scores`); NaN: no reward."""
    learn_policy: torch.Tensor
    """(rows,) bool: the responses the policy loss may learn from."""
    groups: torch.Tensor | None = None
    """(rows,) each response's group (its prompt's position in the step); None: one group per row."""


@dataclass
class Experience:
    rollouts: list[Rollouts]
    """The update's micro-batches, one per `Scored`."""
    kl: torch.Tensor | None
    """(responses,) each response's mean per-token KL estimate against the reference; None
    without a reference forward or old log-probabilities."""


def experience(parts: list[Scored], settings: AdvantageSettings, *, advantage: str = "gae",
               kl_estimator: str = "k1", kl_in_loss: bool = False, dp_group=None) -> Experience:
    """The update's inputs for this replica's micro-batches: advantages (and the critic's returns)
    from the `advantage` estimator, with the KL estimate (`kl_estimator`) in the reward at
    `settings.kl_coef`, or kept for the loss (`kl_in_loss`: the reference log-probabilities travel
    with the rollouts). Whitening reduces over every micro-batch and data-parallel rank of `dp_group`."""
    masks, kls = [], []
    for part in parts:
        _, mask = next_token_targets(part.batch)
        masks.append(mask)
        kls.append(torch.zeros(mask.shape, device=mask.device)
                   if part.ref_logprobs is None or part.old_logprobs is None else
                   torch.where(mask, kl_penalty(part.old_logprobs, part.ref_logprobs, kl_estimator), 0.0))
    sizes = [len(part.scores) for part in parts]
    groups = [torch.arange(sum(sizes[:i]), sum(sizes[:i + 1])) if part.groups is None else part.groups
              for i, part in enumerate(parts)]  # None: each response a group of its own
    values = None if parts and parts[0].values is None else [part.values for part in parts]
    responses = Responses([part.scores for part in parts], groups, masks, kls, values)
    advantages, returns = estimate(advantage, responses, settings, dp_group)
    grouped = ADVANTAGE_ESTIMATORS[advantage].needs_groups
    rollouts = []
    for i, part in enumerate(parts):
        # A response without a reward: out of its group's statistics (advantage 0) for a group
        # estimator, out of the policy loss for the others (its 0 would be taken for a reward).
        learn = part.learn_policy if grouped else part.learn_policy & ~torch.isnan(part.scores)
        rollouts.append(Rollouts(part.batch, part.old_logprobs, part.values, advantages[i],
                                 None if returns is None else returns[i], policy_rows=learn,
                                 ref_logprobs=part.ref_logprobs if kl_in_loss else None))
    read = bool(parts) and parts[0].ref_logprobs is not None and parts[0].old_logprobs is not None
    kl = torch.cat([mean_per_token(k, m) for k, m in zip(kls, masks)]) if read else None
    return Experience(rollouts, kl)
