"""The training forwards over sampled responses: every model's view of them, through megatron's
forward-only schedule at the job's TP/PP layout, on this replica's micro-batches.

- old log-probabilities: the actor's training forward (never the generator's numbers), on the
  very micro-batches the update will run first, so that the first update's ratio is exactly 1
  (skipped when the step's one update can take its own, `RolloutModels.old_logprobs`);
- reference log-probabilities: the same forward with the initial weights swapped in from CPU;
- values: the critic (a reward model read at every position);
- scores: a reward model of the job at each document's last token (`model_scores`, the same
  forward as `scoring.rewards`), or a reward server's (`ppo.remote_reward`).
Each comes back on every pipeline stage (`core.schedule.collect`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_rm.core.schedule import collect
from megatron_rm.data import Batch
from megatron_rm.model.document_model import unwrap
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.experience import Scored, Shaping, shaped_scores
from megatron_rm.ppo.reference import CpuReference
from megatron_rm.runtime.parallel import Layout
from megatron_rm.scoring.rewards import batch_rewards


@dataclass
class RolloutModels:
    actor: list[torch.nn.Module]
    critic: list[torch.nn.Module] | None
    """None: no critic (its values are not computed)."""
    reference: CpuReference | None
    """The initial actor's weights (this rank's shard), swapped into `actor` for the reference;
    None: no reference forward (kl.placement=none)."""
    layout: Layout
    vocab_size: int
    temperature: float
    """The sampling temperature: log-probabilities are those of the distribution sampled from."""
    old_logprobs: bool = True
    """False when the step makes exactly one update and the KL is not in the reward: the update's
    own log-probabilities, detached, are then the old ones (the same numbers, from the same
    weights, so the ratio is exactly 1 either way; as TRL and verl do), and a forward is saved."""


def _per_position(chunks, batches: list[Batch], forward, then, layout: Layout) -> list[torch.Tensor]:
    """(rows, seq) of `then(forward(model, batch), batch)` for each micro-batch; a stage before the
    last passes its activations on untouched."""
    def step(model, batch):
        output = forward(model, batch)
        return then(output, batch) if layout.is_last_stage else output
    return collect(chunks, batches, step, layout, shape=lambda b: tuple(b.input_ids.shape), dtype=torch.float32)


def action_logprobs(models: RolloutModels, batches: list[Batch]) -> list[torch.Tensor]:
    def of_targets(logits, batch):
        return token_logprobs(logits, next_token_targets(batch)[0], models.vocab_size, models.temperature)
    return _per_position(models.actor, batches, forward_logits, of_targets, models.layout)


def token_values(models: RolloutModels, batches: list[Batch]) -> list[torch.Tensor]:
    return _per_position(models.critic, batches, lambda m, b: forward_documents(m, b, token_values=True),
                         lambda values, _: values[..., 0], models.layout)


def model_scores(reward: list[torch.nn.Module], batches: list[Batch], layout: Layout) -> list[torch.Tensor]:
    """(documents,) each document's reward (a multi-label model's first label) on every rank."""
    return [r[:, 0] for r in batch_rewards(reward, batches, layout)]


def rollout_forwards(models: RolloutModels, batches: list[Batch], ended: list[torch.Tensor],
                     rewards: list[torch.Tensor], shaping: Shaping,
                     groups: list[torch.Tensor] | None = None) -> list[Scored]:
    """The policy, reference and critic forwards of the rollout phase for this replica's
    micro-batches, with `ended` (which responses stopped by themselves), `rewards` (each
    response's reward before shaping) and `groups` (each response's prompt in the step), ready
    for `experience.experience`."""
    old = action_logprobs(models, batches) if models.old_logprobs else [None] * len(batches)
    reference = [None] * len(batches)
    if models.reference is not None:
        with models.reference.swapped_into(unwrap(models.actor[0])):
            reference = action_logprobs(models, batches)
    values = token_values(models, batches) if models.critic is not None else [None] * len(batches)
    groups = groups if groups is not None else [None] * len(batches)
    parts = []
    for batch, stopped, raw, old_logprobs, ref_logprobs, value, group in zip(batches, ended, rewards, old, reference,
                                                                            values, groups):
        lengths = next_token_targets(batch)[1].sum(-1)
        scores, learn = shaped_scores(raw, stopped, shaping, lengths.to(raw.device))
        parts.append(Scored(batch, old_logprobs, ref_logprobs, value, scores, learn, group))
    return parts
