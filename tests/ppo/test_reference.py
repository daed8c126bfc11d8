"""The reference policy swapped in from CPU memory computes what a separate frozen copy
computes, and the actor gets its own weights back bit for bit."""

from __future__ import annotations

import torch

from megatron_rm.config import ParallelConfig
from megatron_rm.data import document_batch
from megatron_rm.model import build_policy_model
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.ppo.reference import CpuReference
from tests.conftest import tiny_model_config

VOCAB = 300


def logprobs(model, batch):
    with torch.no_grad():
        return token_logprobs(forward_logits(model, batch), torch.roll(batch.input_ids, -1, 1), VOCAB)


def test_swapped_reference_equals_a_separate_model_and_restores_the_actor(single_rank):
    torch.manual_seed(3)
    actor = build_policy_model(tiny_model_config(), ParallelConfig(), VOCAB).eval()
    separate = build_policy_model(tiny_model_config(), ParallelConfig(), VOCAB).eval()
    separate.load_state_dict(actor.state_dict())
    reference = CpuReference(actor)
    with torch.no_grad():  # the actor moves on, as training moves it
        for parameter in actor.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    trained = {name: tensor.clone() for name, tensor in actor.state_dict().items() if torch.is_tensor(tensor)}
    batch = document_batch([[1, 5, 9, 13, 2], [7, 7, 3]], 0)
    moved = logprobs(actor, batch)
    with reference.swapped_into(actor):
        swapped = logprobs(actor, batch)
    assert torch.equal(swapped, logprobs(separate, batch))
    assert not torch.equal(swapped, moved)
    assert torch.equal(logprobs(actor, batch), moved)
    for name, tensor in actor.state_dict().items():
        if torch.is_tensor(tensor):
            assert torch.equal(tensor, trained[name]), name
