"""megatron's tensor-parallel linear layers, without autograd bookkeeping when no gradient is taken.

megatron-core's `ColumnParallelLinear` and `RowParallelLinear` send every forward through
autograd Functions (the matmul's `LinearWithGradAccumulationAndAsyncCommunication`, or
`LinearWithFrozenWeight` for a frozen weight, and the tensor-parallel region mappings around
it), and `RowParallelLinear` finds its group through
a deprecated lookup that raises a (filtered) warning on every call. Without gradients these
steps save nothing for a backward pass and compute nothing more: on the CPU they cost
40-60 µs per call over `nn.Linear`, and a decoding step makes four such calls per layer
for one token per row (docs/performance.md, "Generation on the CPU").

These subclasses keep megatron's parameters, initialisation and checkpoint layout, and
its forward whenever gradients are enabled or a feature needs it (sequence parallelism,
expert communication, activation offloading, a weight passed in, a gathered output). With
gradients disabled (generation, scoring, the first pass of recomputed activations) they
compute what megatron's forward computes, in the same order (`matmul` with the weight's
transpose, then the bias added, the row layer's partial sums all-reduced before its bias),
so the outputs are the same bits.

Sampling may trade those bits for speed. Inside `sampling_products()`, a float32 product on
the CPU goes through oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's
inductor emits for CPU linears; vLLM's CPU backend also runs oneDNN) instead of `matmul`. MKL's
kernel behind `matmul` runs a decoding step's thin products (one row per response) slowly:
oneDNN ran them 1.3-2.2x faster at ~100M (docs/performance.md, "Generation on the CPU"). The
results differ from `matmul`'s in rounding only. Generation uses it: its tokens are sampled, and
the trainer computes the log-probabilities it learns from with its own forward. Scoring and
training never do, so a PPO ratio stays exactly 1 before the first update.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


def _plain(layer) -> bool:
    """Whether megatron's forward of `layer` would be a matmul and a bias, no more."""
    return (not torch.is_grad_enabled() and not layer.sequence_parallel and not layer.explicit_expert_comm
            and layer.config._cpu_offloading_context is None)


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_sampling = threading.local()
# The smallest weight (elements) sampled through oneDNN. Measured on 2 CPU cores (1 MiB of L2
# each), at 16 to 1,024 rows: from 768 x 768 up oneDNN ran 1.0-1.7x matmul's speed, while on
# the 256 x 1,024 weight of bench/generate_throughput.py's model, or smaller, it ran
# 0.6-1.2x; its fixed cost per call (about 40 µs) also outweighs a small product's time.
ONEDNN_MIN_WEIGHT = 1 << 19


@contextlib.contextmanager
def sampling_products():
    """Within (on this thread): grad-free float32 products on the CPU through oneDNN."""
    before = getattr(_sampling, "on", False)
    _sampling.on = _ONEDNN
    try:
        yield
    finally:
        _sampling.on = before


def _product(input_: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`input_ @ weight.t()`: `matmul`, or oneDNN's linear inside `sampling_products` for a
    float32 product on the CPU by a weight of at least `ONEDNN_MIN_WEIGHT` elements."""
    if (getattr(_sampling, "on", False) and input_.device.type == "cpu"
            and input_.dtype == weight.dtype == torch.float32
            and weight.numel() >= ONEDNN_MIN_WEIGHT):
        return torch.ops.mkldnn._linear_pointwise(input_, weight, None, "none", [], "")
    return torch.matmul(input_, weight.t())


def _biased(layer, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """megatron's (output, bias) pair: the bias added, or returned for the caller to add
    (`skip_bias_add`, where the next op fuses it)."""
    if layer.skip_bias_add:
        return output, layer.bias
    return (output + layer.bias if layer.bias is not None else output), None


class GradFreeColumnParallelLinear(ColumnParallelLinear):
    """`ColumnParallelLinear` whose forward without gradients is a plain matmul."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        gather = self.gather_output if runtime_gather_output is None else runtime_gather_output
        if weight is not None or gather or not _plain(self):
            return super().forward(input_, weight, runtime_gather_output)
        # Column-parallel input needs no communication forward: each rank holds all of it.
        return _biased(self, _product(input_, self.weight))


class GradFreeRowParallelLinear(RowParallelLinear):
    """`RowParallelLinear` whose forward without gradients is a plain matmul and all-reduce."""

    def forward(self, input_):
        if not self.input_is_parallel or not _plain(self):
            return super().forward(input_)
        output = _product(input_, self.weight)
        if self.tp_group.size() > 1:
            torch.distributed.all_reduce(output, group=self.tp_group)
        return _biased(self, output)
