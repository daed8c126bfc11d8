"""From sampled responses to what the PPO update trains on: documents, shaped scores, the
KL-penalised token rewards, advantages and returns.

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
from megatron_rm.ppo.advantages import gae, token_rewards, whiten_together
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


def documents(prompts: list[list[int]], completions: list[Completion], pad_id: int) -> tuple[Batch, torch.Tensor]:
    """Prompt + response of each completion as one padded batch with its response mask, and
    whether each response ended with a stop token."""
    batch = document_batch([p + c.token_ids for p, c in zip(prompts, completions)], pad_id,
                           prompt_lengths=[len(p) for p in prompts])
    return batch, torch.tensor([c.finish_reason == EOS for c in completions])


def shaped_scores(scores: torch.Tensor, ended: torch.Tensor, shaping: Shaping) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores as PPO uses them, which responses the policy loss may learn from)."""
    if shaping.clip is not None:
        scores = scores.clamp(-shaping.clip, shaping.clip)
    if shaping.no_eos == "penalty":
        return torch.where(ended, scores, torch.full_like(scores, shaping.no_eos_penalty)), torch.ones_like(ended)
    return scores, ended


@dataclass
class Scored:
    """One micro-batch of responses after the rollout forwards. Per-position tensors are
    (rows, seq) in log-probability space, laid out as `batch`."""

    batch: Batch
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    """(rows,) shaped scores (`shaped_scores`)."""
    learn_policy: torch.Tensor
    """(rows,) bool: the responses the policy loss may learn from."""


@dataclass
class Experience:
    rollouts: list[Rollouts]
    """The update's micro-batches, one per `Scored`."""
    kl: torch.Tensor
    """(responses,) each response's mean per-token KL estimate against the reference."""


def experience(parts: list[Scored], *, kl_coef: float, estimator: str, gamma: float, lam: float,
               dp_group=None) -> Experience:
    """The update's inputs for this replica's micro-batches: KL-penalised token rewards, GAE, and
    advantages whitened together over every micro-batch and data-parallel rank of `dp_group`
    (weighted by action tokens)."""
    masks, kls, advantages, returns = [], [], [], []
    for part in parts:
        _, mask = next_token_targets(part.batch)
        kl = torch.where(mask, kl_penalty(part.old_logprobs, part.ref_logprobs, estimator), 0.0)
        advantage, ret = gae(token_rewards(part.scores, kl, kl_coef, mask), part.values, mask, gamma, lam)
        masks.append(mask)
        kls.append(mean_per_token(kl, mask))
        advantages.append(advantage)
        returns.append(ret)
    whitened = whiten_together(advantages, masks, dp_group)
    rollouts = [Rollouts(part.batch, part.old_logprobs, part.values, advantage, ret, policy_rows=part.learn_policy)
                for part, advantage, ret in zip(parts, whitened, returns)]
    return Experience(rollouts, torch.cat(kls))
