"""The CPU redirection for megatron-core: what it redirects, how narrowly, and never on a GPU."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
import torch

from megatron_rm.runtime import cpu_compat
from tests.conftest import PYTHON, REPO, child_env


@pytest.fixture(autouse=True)
def active():
    assert cpu_compat.enable() is True  # this machine has no CUDA
    assert cpu_compat.enable() is True and cpu_compat.is_active()  # idempotent


def test_device_queries_and_moves_stay_on_the_cpu():
    assert torch.cuda.current_device() == torch.device("cpu")
    tensor = torch.ones(2)
    assert tensor.cuda() is tensor
    module = torch.nn.Linear(2, 2)
    assert module.cuda() is module


def test_cuda_factories_are_redirected_only_inside_megatron():
    from megatron.core.pipeline_parallel import schedules

    assert schedules.torch.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
    assert schedules.torch.ones(2).device.type == "cpu"
    assert schedules.torch.float32 is torch.float32
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")  # everywhere else CUDA is still absent


def test_tensor_parallel_rng_tracker_forks_cpu_streams():
    from megatron.core.tensor_parallel import random as mcore_random

    tracker = mcore_random.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("test-stream", 42)
    outside_before = torch.get_rng_state()
    with tracker.fork("test-stream"):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside_before)  # the default stream is untouched
    with tracker.fork("test-stream"):
        second = torch.rand(4)
    assert not torch.equal(first, second)  # the forked stream advanced
    torch.manual_seed(42)
    assert torch.equal(first, torch.rand(4))  # and it is the CPU generator seeded with 42


def test_clip_grad_matches_torch_reference():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, r in zip(params, reference):
        p.grad = torch.randn_like(p)
        r.grad = p.grad.clone()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
    torch.nn.utils.clip_grad_norm_(reference, max_norm=0.5)
    cpu_compat.clip_grad_by_total_norm(params, max_norm=0.5, total_norm=total)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=0)
    before = [p.grad.clone() for p in params]
    cpu_compat.clip_grad_by_total_norm(params, max_norm=1e6, total_norm=total)  # under the limit
    assert all(torch.equal(b, p.grad) for b, p in zip(before, params))


def test_megatron_optimizer_uses_the_cpu_clip():
    from megatron.core.optimizer import optimizer as mcore_optimizer

    assert mcore_optimizer.clip_grad_by_total_norm_fp32 is cpu_compat.clip_grad_by_total_norm


@pytest.mark.slow
def test_nothing_is_redirected_when_cuda_is_present():
    # A fresh interpreter that believes CUDA is there: enable() must leave torch and megatron alone.
    script = textwrap.dedent("""
        import torch
        torch.cuda.is_available = lambda: True
        original = (torch.cuda.current_device, torch.Tensor.cuda, torch.cuda.get_rng_state)
        from megatron_rm.runtime import cpu_compat
        from megatron.core.pipeline_parallel import schedules
        from megatron.core.tensor_parallel import random as mcore_random
        rng_getter = mcore_random._get_cuda_rng_state
        assert cpu_compat.enable() is False and not cpu_compat.is_active()
        assert (torch.cuda.current_device, torch.Tensor.cuda, torch.cuda.get_rng_state) == original
        assert schedules.torch is torch and mcore_random._get_cuda_rng_state is rng_getter
        print("untouched")
    """)
    result = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "untouched"
