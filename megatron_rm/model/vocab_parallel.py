"""Log-probabilities, entropies and sampling logits from vocabulary-parallel logits.

The output layer gives each tensor-parallel rank a contiguous shard of the padded
vocabulary's columns. Nothing here gathers the whole vocabulary for every token: the
log-probability of a given token is megatron's vocab-parallel cross-entropy (one max and
one sum across the TP group), and the entropy takes one more sum. (Sampling needs one
position's whole vocabulary per row; megatron's inference path gathers that.)

Every function first divides by the sampling temperature and masks the padding columns
(at or past the real `vocab_size`) to -inf, so that padding never takes probability mass
and a log-probability here is the one the sampler drew from.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


def _shard_start(shard_size: int) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * shard_size


def scaled(logits: torch.Tensor, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """fp32 `logits / temperature` with this shard's padding columns at -inf (a new tensor)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (greedy decoding takes the argmax of "
                         "the logits and scores it at temperature 1)")
    shard = logits.shape[-1]
    columns = torch.arange(_shard_start(shard), _shard_start(shard) + shard, device=logits.device)
    return (logits.float() / temperature).masked_fill(columns >= vocab_size, float("-inf"))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                   temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] for every position, shape of `targets`;
    differentiable (megatron's vocab-parallel cross-entropy and its backward)."""
    return -tensor_parallel.vocab_parallel_cross_entropy(scaled(logits, vocab_size, temperature), targets)


def token_entropy(logits: torch.Tensor, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position, (...,); differentiable.

    H = log S - sum(e * z) / S with z = scaled logits - their max and e = exp(z), S = sum(e),
    the sums taken across the TP group. Padding columns are left out by a mask, not by
    -inf arithmetic, so that neither value nor gradient meets 0 * inf.
    """
    z = scaled(logits, vocab_size, temperature)
    valid = torch.isfinite(z)
    top = z.detach().max(-1, keepdim=True).values
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    shifted = torch.where(valid, z - top, 0.0)
    e = shifted.exp() * valid
    total = tensor_parallel.reduce_from_tensor_model_parallel_region(e.sum(-1))
    weighted = tensor_parallel.reduce_from_tensor_model_parallel_region((e * shifted).sum(-1))
    return total.log() - weighted / total
