"""The layout transforms against plain references, and RoPE scaling against transformers."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from megatron_rm.config import ModelConfig, ParallelConfig, RopeScalingConfig
from megatron_rm.convert.families import FAMILIES, Shapes, to_hf, to_megatron
from megatron_rm.model import build_reward_model

SHAPES = Shapes(num_query_groups=2, heads_per_group=3, head_dim=4)


def test_qkv_interleaves_whole_query_groups():
    hidden = 5
    q = torch.arange(2 * 3 * 4 * hidden, dtype=torch.float32).reshape(24, hidden)
    k, v = -torch.rand(8, hidden), 100 + torch.rand(8, hidden)
    fused = to_megatron("qkv", [q, k, v], SHAPES)
    # Group g holds its 3 query heads, then its key head, then its value head.
    expected = torch.cat([torch.cat([q[12 * g:12 * (g + 1)], k[4 * g:4 * (g + 1)], v[4 * g:4 * (g + 1)]])
                          for g in range(2)])
    assert torch.equal(fused, expected)
    assert all(torch.equal(a, b) for a, b in zip(to_hf("qkv", fused, SHAPES), (q, k, v)))
    bias = [torch.rand(24), torch.rand(8), torch.rand(8)]
    assert all(torch.equal(a, b) for a, b in zip(to_hf("qkv", to_megatron("qkv", bias, SHAPES), SHAPES), bias))


def test_gate_up_and_embedding_padding_invert():
    gate, up = torch.rand(6, 3), torch.rand(6, 3)
    fc1 = to_megatron("gate_up", [gate, up], SHAPES)
    assert torch.equal(fc1[:6], gate)
    assert all(torch.equal(a, b) for a, b in zip(to_hf("gate_up", fc1, SHAPES), (gate, up)))
    embedding = torch.rand(10, 3)
    padded = to_megatron("embedding", [embedding], SHAPES, rows=16)
    assert padded.shape == (16, 3) and not padded[10:].any()
    assert torch.equal(to_hf("embedding", padded, SHAPES, rows=10)[0], embedding)


def test_every_family_maps_each_hf_tensor_once():
    for family in FAMILIES.values():
        names = [n for rule in family.rules_for(3, head_bias=True) for n in rule.hf]
        assert len(names) == len(set(names)), family.model_type


def test_each_kind_takes_its_own_head_from_the_one_table():
    def heads(**kind):
        return {n for rule in FAMILIES["qwen2"].rules_for(2, head_bias=True, **kind) for n in rule.hf
                if not n.startswith("model.")}

    assert heads() == {"score.weight", "score.bias"}
    assert heads(model_kind="policy") == {"lm_head.weight"}
    assert heads(model_kind="policy", tied=True) == set()  # the embedding is the output layer
    trunk = [r for r in FAMILIES["qwen2"].rules_for(2, head_bias=False) if r.only is None]
    assert trunk == [r for r in FAMILIES["qwen2"].rules_for(2, False, "policy") if r.only is None]


@pytest.mark.parametrize("scaling", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "factor": 4.0},
])
def test_rope_scaling_matches_transformers(scaling, single_rank):
    hf = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0,
                                  rope_scaling=dict(scaling), max_position_embeddings=4096)
    reference, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    ours = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=64,
                       rotary_base=500000.0, rope_scaling=RopeScalingConfig(**scaling))
    model = build_reward_model(ours, ParallelConfig(), vocab_size=284)
    torch.testing.assert_close(model.rotary_pos_emb.inv_freq, reference, rtol=1e-6, atol=0)
    unscaled = build_reward_model(ModelConfig(**{**ours.__dict__, "rope_scaling": None}), ParallelConfig(), 284)
    assert not torch.allclose(unscaled.rotary_pos_emb.inv_freq, reference)
