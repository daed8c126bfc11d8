"""The reference policy without a second model on the accelerator: the initial actor's
weights kept in CPU memory and swapped into the actor's own module for the reference forward
(as NeMo-Aligner's `cpu_weight_swap` does), so a run holds two trainable models (actor,
critic) and one frozen one (the reward model) on the device instead of four.

The swap copies in place (`Tensor.copy_`), so parameters keep their storage: megatron's DDP
buffers, which hold the parameters, and the optimizer's references stay valid, and the
actor's weights come back bit for bit afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers by name (what a forward reads)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class CpuReference:
    """A CPU copy of `module`'s weights as they are now (this rank's TP/PP shard)."""

    def __init__(self, module: torch.nn.Module):
        self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in _tensors(module).items()}

    @contextmanager
    def swapped_into(self, module: torch.nn.Module):
        """`module` computes with the reference weights inside the block, with its own after."""
        tensors = _tensors(module)
        if set(tensors) != set(self.weights):
            raise ValueError("the module's parameters are not those the reference was taken from")
        own = {name: tensor.detach().to("cpu", copy=True) for name, tensor in tensors.items()}
        try:
            with torch.no_grad():
                for name, tensor in tensors.items():
                    tensor.copy_(self.weights[name])
            yield module
        finally:
            with torch.no_grad():
                for name, tensor in tensors.items():
                    tensor.copy_(own[name])
