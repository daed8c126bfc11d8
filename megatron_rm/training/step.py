"""One pass of micro-batches through megatron-core's pipeline schedule.

`_training_step` follows megatron's `forward_step_func(data_iterator, model) ->
(output, loss_func)` contract; the loss function is the run's `Objective` (sum of
the loss's terms, number of terms, metric sums). With `calculate_per_token_loss`
megatron then divides gradients by the terms of the whole global batch, so the
loss is the mean over pairs (or groups, or labels) however they are split into
micro-batches and ranks (packed micro-batches hold different numbers of pairs,
and that stays exact).
"""

from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_rm import runtime
from megatron_rm.data.batching import Batch
from megatron_rm.model.inputs import position_ids
from megatron_rm.parallel import broadcast_from_last_stage


def _forward(model, batch: Batch, token_values: bool = False) -> torch.Tensor:
    extra = {"token_values": True} if token_values else {}
    return model(batch.input_ids, position_ids(batch.attention_mask), batch.attention_mask, **extra)


def _training_step(objective, data_iterator, model):
    batch = next(data_iterator).to(runtime.device())
    return _forward(model, batch, objective.token_values), partial(objective, batch)


def _returned_rewards(rewards: torch.Tensor):
    """Scoring has no loss; megatron's schedule still wants a loss tensor beside the collected data."""
    return rewards.sum() * 0.0, {"rewards": rewards.detach()}


def _scoring_step(data_iterator, model):
    batch = next(data_iterator).to(runtime.device())
    return _forward(model, batch), _returned_rewards


def _schedule(step_func, model_chunks, batches: list[Batch], forward_only: bool) -> list:
    """megatron-core's pipeline schedule over `batches`; its per-micro-batch outputs (last stage)."""
    return get_forward_backward_func()(
        forward_step_func=step_func,
        data_iterator=iter(batches),
        model=model_chunks,
        num_microbatches=len(batches),
        seq_length=max(b.input_ids.shape[1] for b in batches),
        micro_batch_size=max(b.input_ids.shape[0] for b in batches),
        forward_only=forward_only,
    )


def run_pair_batches(model_chunks, batches: list[Batch], objective, *, forward_only: bool) -> torch.Tensor:
    """Forward (and backward unless `forward_only`) over this rank's micro-batches.

    Returns `objective`'s metric sums over every data-parallel rank's micro-batches,
    on every rank.
    """
    step_func = partial(_training_step, objective)
    results = _schedule(step_func, model_chunks, batches, forward_only) if batches else []
    local = torch.zeros(objective.size, dtype=torch.float64, device=runtime.device())
    for result in results:
        local += result["sums"]
    dist.all_reduce(local, group=parallel_state.get_data_parallel_group())
    return broadcast_from_last_stage(local, local.shape, local.dtype)


@torch.no_grad()
def score(model_chunks, batches: Iterable[Batch]) -> torch.Tensor:
    """Rewards (documents, num_labels) for this rank's batches, identical on every pipeline stage.

    Documents follow the batches' layout order. Only the last stage computes them;
    it broadcasts the (documents, num_labels) tensor, never hidden states.
    """
    batches = list(batches)
    outputs = _schedule(_scoring_step, model_chunks, batches, forward_only=True)
    rewards = torch.cat([o["rewards"] for o in outputs]) if outputs else None
    documents = sum(b.num_documents for b in batches)
    num_labels = _unwrap(model_chunks[0]).num_labels
    return broadcast_from_last_stage(rewards, (documents, num_labels), torch.float32)


def _unwrap(module):
    while hasattr(module, "module"):
        module = module.module
    return module
