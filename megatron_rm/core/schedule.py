"""megatron-core's pipeline schedule over a list of micro-batches: the one forward/backward
primitive that training, evaluation, scoring and PPO share.

A caller supplies its forward call, `forward(model, batch) -> output`, and either an
objective (training and evaluation: a loss and metric sums) or nothing (collection:
the last stage's outputs themselves). megatron's `forward_step_func(data_iterator,
model) -> (output, loss_func)` contract is met here, once.

With `calculate_per_token_loss` megatron divides gradients by the loss terms of
the whole global batch (`(loss sum, number of terms, ...)` from the loss function),
so a loss is the mean over pairs, groups, labels or tokens however they are split
into micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_rm import runtime
from megatron_rm.data import Batch
from megatron_rm.runtime.parallel import Layout, broadcast_from_last_stage
from megatron_rm.runtime.sums import all_reduce_sums

Forward = Callable[[torch.nn.Module, Batch], torch.Tensor]


def _step(forward: Forward, loss_func_for, data_iterator, model):
    batch = next(data_iterator).to(runtime.device())
    return forward(model, batch), partial(loss_func_for, batch)


def run_schedule(model_chunks, batches: Sequence[Batch], forward: Forward, loss_func_for, *,
                 forward_only: bool) -> list:
    """Forward (and backward unless `forward_only`) over `batches` through megatron's schedule.

    `loss_func_for(batch, output)` is megatron's loss function for one micro-batch. Returns
    the loss functions' per-micro-batch dicts (last pipeline stage; empty elsewhere).
    """
    if not batches:
        return []
    return get_forward_backward_func()(
        forward_step_func=partial(_step, forward, loss_func_for),
        data_iterator=iter(batches),
        model=model_chunks,
        num_microbatches=len(batches),
        # Micro-batches are padded to their own length (pipeline stages exchange shapes).
        seq_length=max(b.input_ids.shape[1] for b in batches),
        micro_batch_size=max(b.input_ids.shape[0] for b in batches),
        forward_only=forward_only,
    )


def run_objective(model_chunks, batches: Sequence[Batch], objective, layout: Layout, *,
                  forward_only: bool) -> torch.Tensor:
    """Forward (and backward unless `forward_only`) of `objective` over this rank's micro-batches.

    `objective` has `forward(model, batch)`, is megatron's loss function
    (`objective(batch, output) -> (loss sum, terms, {"sums": metric sums})`) and has
    `size`, the length of its float64 metric sums. Returns those sums over every
    micro-batch of every data-parallel rank, on every rank.
    """
    results = run_schedule(model_chunks, batches, objective.forward, objective, forward_only=forward_only)
    local = torch.zeros(objective.size, dtype=torch.float64, device=runtime.device())
    for result in results:
        local += result["sums"]
    all_reduce_sums(local, layout.groups.dp)
    return broadcast_from_last_stage(local, local.shape, local.dtype, layout)


def _keep_output(batch: Batch, output: torch.Tensor):
    """Collection has no loss; megatron's schedule still wants a loss tensor beside the kept data."""
    return output.sum() * 0.0, {"output": output.detach()}


@torch.no_grad()
def collect(model_chunks, batches: Sequence[Batch], forward: Forward, layout: Layout, *,
            shape: Callable[[Batch], tuple], dtype: torch.dtype) -> list[torch.Tensor]:
    """`forward`'s output for each micro-batch, on every pipeline stage.

    The last stage computes them; `shape(batch)` is each output's shape, which every
    stage knows from the batch alone (rewards: (documents, labels); per-token values or
    log-probabilities: (rows, seq, ...)). One broadcast of all outputs, flattened, then
    split back: outputs only, never hidden states.
    """
    batches = list(batches)
    if not batches:
        return []
    results = run_schedule(model_chunks, batches, forward, _keep_output, forward_only=True)
    shapes = [tuple(shape(b)) for b in batches]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    flat = torch.cat([r["output"].to(dtype).flatten() for r in results]) if results else None
    flat = broadcast_from_last_stage(flat, (sum(sizes),), dtype, layout)
    return [piece.view(s) for piece, s in zip(flat.split(sizes), shapes)]
