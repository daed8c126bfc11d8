"""One pass of micro-batches through megatron-core's pipeline schedule.

`forward_step` follows megatron's `forward_step_func(data_iterator, model) ->
(output, loss_func)` contract. The loss function returns (sum of per-pair
losses, number of pairs, metric sums); with `calculate_per_token_loss` megatron
then divides gradients by the pairs of the whole global batch, so the loss is the
mean over pairs however they are split into micro-batches and ranks (packed
micro-batches hold different numbers of pairs, and that stays exact).
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
from megatron_rm.losses import bradley_terry_loss
from megatron_rm.metrics import SUM_FIELDS, pair_sums
from megatron_rm.model.inputs import position_ids
from megatron_rm.parallel import broadcast_from_last_stage


def _forward(model, batch: Batch) -> torch.Tensor:
    return model(batch.input_ids, position_ids(batch.attention_mask), batch.attention_mask)


def pair_loss(batch: Batch, rewards: torch.Tensor):
    """Bradley-Terry loss of one micro-batch: (loss sum, pair count, {"pair_sums": ...}).

    `rewards` holds one row per document; `batch.comparisons` names the better and
    the worse document of every pair (a K-wise group contributes all its pairs).
    """
    chosen, rejected = rewards[batch.comparisons[:, 0], 0], rewards[batch.comparisons[:, 1], 0]
    per_pair = bradley_terry_loss(chosen, rejected, batch.margins)
    sums = pair_sums(chosen, rejected, per_pair, tokens=batch.tokens, padded_tokens=batch.padded_tokens)
    num_pairs = torch.tensor(batch.num_pairs, dtype=torch.int, device=rewards.device)
    return per_pair.sum(), num_pairs, {"pair_sums": sums}


def forward_step(data_iterator, model):
    batch = next(data_iterator).to(runtime.device())
    return _forward(model, batch), partial(pair_loss, batch)


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


def run_pair_batches(model_chunks, batches: list[Batch], *, forward_only: bool) -> torch.Tensor:
    """Forward (and backward unless `forward_only`) over this rank's micro-batches.

    Returns the metric sums (see `metrics.SUM_FIELDS`) over every data-parallel
    rank's micro-batches, on every rank.
    """
    results = _schedule(forward_step, model_chunks, batches, forward_only) if batches else []
    local = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=runtime.device())
    for result in results:
        local += result["pair_sums"]
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
