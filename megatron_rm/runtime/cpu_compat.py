"""Run megatron-core 0.16 on CPU with gloo when CUDA is absent.

megatron-core assumes CUDA in a handful of places that have nothing to do with
the math: it allocates buffers on `torch.cuda.current_device()`, moves tensors
with `.cuda()`, keeps its tensor-parallel RNG streams as CUDA generator states,
and creates a few counters with `device="cuda"`. Each is redirected to the CPU
here, in one place, and only when `torch.cuda.is_available()` is False, so a GPU
run never sees any of it.
"""

from __future__ import annotations

import functools
import importlib
import types

import torch

# megatron modules (on the CPU training path) that build tensors with a literal
# `device="cuda"`. Their module-level `torch` name is replaced by a proxy whose
# tensor factories map that device to the CPU; nothing outside them is touched.
MODULES_WITH_CUDA_FACTORIES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.tensor_parallel.data",
    "megatron.core.utils",
)
FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange")

_active = False


def is_active() -> bool:
    """True once the CPU redirection is installed in this process."""
    return _active


def enable() -> bool:
    """Install the redirection if CUDA is absent; return whether it is active.

    Idempotent. Call before building any megatron model or optimizer.
    """
    global _active
    if _active or torch.cuda.is_available():
        return _active
    _redirect_device_queries()
    _redirect_rng()
    _redirect_grad_clipping()
    for name in MODULES_WITH_CUDA_FACTORIES:
        module = importlib.import_module(name)
        module.torch = _TorchWithCpuFactories()
    _active = True
    return True


def _cpu_device(device):
    if device is not None and torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


def _redirect_device_queries() -> None:
    torch.cuda.current_device = lambda: torch.device("cpu")
    # Point-to-point pipeline sends synchronize the stream; a CPU op is complete on return.
    torch.cuda.synchronize = lambda *args, **kwargs: None
    # `.cuda()` is how megatron moves modules and tensors "to the device";
    # on a CPU run the device is the CPU, so both are identity moves.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def _redirect_rng() -> None:
    from megatron.core.tensor_parallel import random as mcore_random

    # The tensor-parallel RNG tracker forks "CUDA" generator states; on CPU the
    # same bookkeeping runs on the CPU default generator.
    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)


def _redirect_grad_clipping() -> None:
    from megatron.core.optimizer import optimizer as mcore_optimizer

    mcore_optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm


def clip_grad_by_total_norm(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's `clip_grad_by_total_norm_fp32` without its CUDA-tensor assertion.

    The global norm is still megatron's own (reduced over TP, PP and DP); only
    the in-place rescale, identical in formula, runs here.
    """
    grad_attr = "decoupled_grad" if use_decoupled_grad else "grad"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff >= 1.0:
        return
    for param in parameters:
        grad = getattr(param, grad_attr, None)
        if grad is not None:
            grad.detach().mul_(clip_coeff)


class _TorchWithCpuFactories(types.ModuleType):
    """`torch`, except that its tensor factories place `device="cuda"` on the CPU."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in FACTORIES:
            return attr

        @functools.wraps(attr)
        def factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return attr(*args, **kwargs)

        return factory
