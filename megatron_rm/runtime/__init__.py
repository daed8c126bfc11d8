"""Where a run executes: the device, the collective backend, optional kernels; the process groups
(`parallel`) and exact sums over ranks (`sums`)."""

from __future__ import annotations

import functools
import importlib.util

import torch

from megatron_rm.runtime import cpu_compat


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device this process computes on (its local GPU, or the CPU)."""
    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    """Collective backend: NCCL on GPUs, gloo on the CPU."""
    return "nccl" if cuda_available() else "gloo"


@functools.cache
def te_available() -> bool:
    """Whether TransformerEngine's PyTorch module imports in this environment."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a wheel without its CUDA libraries fails in many ways
        return False
    return True


__all__ = ["backend", "cpu_compat", "cuda_available", "device", "te_available"]
