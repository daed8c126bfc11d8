"""Layer specs: torch-SDPA core attention against megatron's local attention.

The same weights under `transformer_impl=local` and `=sdpa` must give the same
rewards and the same Bradley-Terry gradients on right-padded, left-padded and
packed batches, with grouped-query heads and with a head size other than
hidden / heads; sdpa_parity_worker.py repeats the comparison at TP2 (with test_linear.py's).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

import megatron_rm  # noqa: F401  (its warning filters apply before megatron-core's import-time notices)
from megatron_rm import runtime
from megatron_rm.config import ParallelConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.model import build_reward_model, sdpa_attention, transformer_config
from megatron_rm.model.inputs import causal_padding_mask, position_ids
from megatron_rm.model.layer_spec import (
    layer_implementation,
    takes_packed_sequences,
    transformer_layer_spec,
    uses_transformer_engine,
)
from megatron_rm.model.sdpa_attention import SDPAttention
from megatron_rm.model.self_attention import RotatedCacheSelfAttention
from megatron_rm.objectives.losses import bradley_terry_loss
from tests.conftest import REPO, tiny_model_config, torchrun

# Document masks (see inputs.py); every row pairs with the next for the loss.
MASKS = {
    "right-padded": [[1] * 7 + [0] * 4, [1] * 3 + [0] * 8, [1] * 11, [1] * 5 + [0] * 6],
    "left-padded": [[0] * 4 + [1] * 7, [0] * 8 + [1] * 3, [1] * 11, [0] * 6 + [1] * 5],
    "packed": [[1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0], [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]],
}
# name: ModelConfig overrides (the tiny model has 4 heads of 16 in 2 query groups)
MODELS = {
    "gqa": {},
    "mha, kv_channels 24": {"num_query_groups": 4, "kv_channels": 24},
    "gqa, kv_channels 8": {"kv_channels": 8},
}
TOLERANCE = 1e-5


def model_config(**overrides):
    cfg = tiny_model_config()
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


def build_pair(parallel: ParallelConfig, **overrides):
    """(local model, sdpa model) holding the same weights."""
    cfg = model_config(**overrides)
    vocab = len(load_tokenizer(cfg.tokenizer))
    torch.manual_seed(0)
    local = build_reward_model(dataclasses.replace(cfg, transformer_impl="local"), parallel, vocab)
    sdpa = build_reward_model(dataclasses.replace(cfg, transformer_impl="sdpa"), parallel, vocab)
    sdpa.load_state_dict(local.state_dict())
    cores = {type(layer.self_attention.core_attention) for m in (local, sdpa) for layer in m.decoder.layers}
    assert cores == {DotProductAttention, SDPAttention}
    return local.eval(), sdpa.eval(), vocab


def batch(name: str, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.tensor(MASKS[name])
    ids = torch.randint(0, vocab, mask.shape, generator=torch.Generator().manual_seed(5))
    return ids, mask


def rewards_and_grads(model, ids, mask) -> tuple[torch.Tensor, dict]:
    """Rewards of every document, and the gradients of a Bradley-Terry loss over
    consecutive documents (0 preferred to 1, 2 to 3, ...)."""
    model.zero_grad(set_to_none=True)
    rewards = model(ids, position_ids(mask), mask)
    pairs = rewards[: rewards.shape[0] // 2 * 2, 0].view(-1, 2)
    bradley_terry_loss(pairs[:, 0], pairs[:, 1]).mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return rewards.detach(), grads


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| over max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def compare(local, sdpa, vocab: int) -> dict:
    """Per batch: the rewards' and the worst parameter gradient's relative difference."""
    result = {}
    for name in MASKS:
        ids, mask = batch(name, vocab)
        local_rewards, local_grads = rewards_and_grads(local, ids, mask)
        sdpa_rewards, sdpa_grads = rewards_and_grads(sdpa, ids, mask)
        assert local_grads.keys() == sdpa_grads.keys() and len(local_grads) > 10
        result[name] = {
            "rewards": relative_difference(sdpa_rewards, local_rewards),
            "grads": max(relative_difference(sdpa_grads[k], g) for k, g in local_grads.items()),
            "documents": local_rewards.shape[0],
        }
    return result


def tiny_transformer_config(**overrides):
    config = transformer_config(tiny_model_config(), ParallelConfig())
    return dataclasses.replace(config, **overrides)


def attention_inputs(seq=6, batch_size=3, heads=4, groups=2, dim=16):
    generator = torch.Generator().manual_seed(9)
    query = torch.randn(seq, batch_size, heads, dim, generator=generator)
    key, value = (torch.randn(seq, batch_size, groups, dim, generator=generator) for _ in range(2))
    return query, key, value


# ---- which layers a config builds


def test_auto_takes_sdpa_without_transformer_engine(monkeypatch):
    for impl, expected in [("auto", "sdpa"), ("sdpa", "sdpa"), ("local", "local")]:
        cfg = model_config(transformer_impl=impl)
        assert layer_implementation(cfg) == expected and not uses_transformer_engine(cfg)
        spec = transformer_layer_spec(cfg)
        core = spec.submodules.self_attention.submodules.core_attention
        assert core is (SDPAttention if expected == "sdpa" else DotProductAttention)
        assert spec.submodules.self_attention.module is RotatedCacheSelfAttention
        assert not takes_packed_sequences(spec)
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "te_available", lambda: True)
    assert layer_implementation(model_config(transformer_impl="auto")) == "transformer_engine"
    assert layer_implementation(model_config(transformer_impl="sdpa")) == "sdpa"


def test_default_model_runs_sdpa_with_the_local_models_weight_names(single_rank):
    local, sdpa, vocab = build_pair(ParallelConfig())
    default = build_reward_model(tiny_model_config(), ParallelConfig(), vocab)
    cores = [layer.self_attention.core_attention for layer in default.decoder.layers]
    assert cores and all(isinstance(core, SDPAttention) for core in cores)
    assert sdpa.state_dict().keys() == local.state_dict().keys()
    assert sdpa.sharded_state_dict().keys() == local.sharded_state_dict().keys()


# ---- the reward model: sdpa against local


@pytest.mark.parametrize("overrides", list(MODELS.values()), ids=list(MODELS))
@pytest.mark.parametrize("cpu_kernels", [sdpa_attention.CPU_KERNELS, ()], ids=["math", "torch's choice"])
def test_sdpa_rewards_and_gradients_match_local(single_rank, monkeypatch, overrides, cpu_kernels):
    # torch's choice on the CPU is its fused flash kernel, the one closer to the GPU's.
    monkeypatch.setattr(sdpa_attention, "CPU_KERNELS", cpu_kernels)
    local, sdpa, vocab = build_pair(ParallelConfig(), **overrides)
    result = compare(local, sdpa, vocab)
    print(json.dumps(result))  # the measured differences, with pytest -s
    for name, diffs in result.items():
        assert diffs["rewards"] < TOLERANCE and diffs["grads"] < TOLERANCE, (name, diffs)
    assert result["packed"]["documents"] == 5


@pytest.mark.slow
def test_sdpa_rewards_and_gradients_match_local_at_tp2(tmp_path):
    torchrun(2, REPO / "tests" / "model" / "sdpa_parity_worker.py", str(tmp_path), timeout=300)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        print(rank, json.dumps(result))
        for model, cases in result["models"].items():
            for name, diffs in cases.items():
                assert diffs["rewards"] < TOLERANCE and diffs["grads"] < TOLERANCE, (rank, model, name, diffs)
        assert len(result["linear"]) == 6 and all(result["linear"].values()), (rank, result["linear"])


# ---- the module alone, against DotProductAttention


@pytest.mark.parametrize("mask_type, with_mask, groups, options", [
    (AttnMaskType.causal, True, 2, {}),
    (AttnMaskType.causal, False, 2, {}),  # no mask: is_causal, grouped heads through enable_gqa
    (AttnMaskType.causal, False, 4, {}),
    (AttnMaskType.no_mask, False, 1, {}),
    (AttnMaskType.causal, True, 2, {"apply_query_key_layer_scaling": True}),
    (AttnMaskType.causal, True, 2, {"softmax_scale": 0.3}),
])
def test_module_matches_dot_product_attention(single_rank, mask_type, with_mask, groups, options):
    config = tiny_transformer_config(num_query_groups=groups, **options)
    built = dict(config=config, layer_number=2, attn_mask_type=mask_type, attention_type="self",
                 softmax_scale=config.softmax_scale)
    reference, sdpa = DotProductAttention(**built), SDPAttention(**built)
    query, key, value = attention_inputs(groups=groups)
    mask = causal_padding_mask(torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 2, 2, 2, 0]]))
    if with_mask:
        expected = reference(query, key, value, mask)
        actual = sdpa(query, key, value, mask)
    else:
        # The mask DotProductAttention builds without one (there on a literal "cuda" device).
        causal = torch.ones(6, 6, dtype=torch.bool).triu(1) if mask_type == AttnMaskType.causal else None
        expected = reference(query, key, value, causal)
        actual = sdpa(query, key, value, None)
    assert actual.shape == expected.shape == (6, 3, 4 * 16)
    torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_one_query_position_matches_dot_product_attention(single_rank, groups):
    # A KV-cached decoding step: one new query per row against the cache, left padding blocked.
    config = tiny_transformer_config(num_query_groups=groups)
    built = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    reference, sdpa = DotProductAttention(**built), SDPAttention(**built)
    query, _, _ = attention_inputs(seq=1, groups=groups)
    _, key, value = attention_inputs(seq=7, groups=groups)
    blocked = (torch.arange(7)[None, :] < torch.tensor([0, 3, 6])[:, None])[:, None, None, :]
    expected = reference(query, key, value, blocked)
    actual = sdpa(query, key, value, blocked)
    assert actual.shape == expected.shape == (1, 3, 4 * 16)
    torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=1e-6)


def test_attention_dropout_draws_from_the_tensor_parallel_rng(single_rank):
    sdpa = SDPAttention(tiny_transformer_config(attention_dropout=0.5), 1, AttnMaskType.causal, "self")
    query, key, value = attention_inputs()
    evaluated = sdpa.eval()(query, key, value, None)
    sdpa.train()
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker_state, default_state = tracker.get_states(), torch.get_rng_state()
    first = sdpa(query, key, value, None)
    assert torch.equal(torch.get_rng_state(), default_state)  # the default stream is untouched
    tracker.set_states(tracker_state)
    again = sdpa(query, key, value, None)
    assert torch.equal(first, again) and not torch.allclose(first, evaluated)
    assert torch.equal(sdpa.eval()(query, key, value, None), evaluated)  # no dropout in eval


@pytest.mark.parametrize("options, named", [
    ({"context_parallel_size": 2}, "context_parallel_size"),
    ({"window_size": (4, 0)}, "window_size"),
    ({"softmax_type": "off-by-one"}, "softmax_type"),
    ({"qk_clip": True}, "qk_clip"),
    ({"bf16": True, "attention_softmax_in_fp32": False}, "attention_softmax_in_fp32"),
])
def test_options_it_cannot_honour_are_refused_when_built(single_rank, options, named):
    config = tiny_transformer_config()
    for option, value in options.items():
        setattr(config, option, value)  # after validation: some checks need other settings
    with pytest.raises(ValueError, match=named):
        SDPAttention(config, 1, AttnMaskType.causal, "self")


def test_inputs_it_cannot_honour_are_refused(single_rank):
    sdpa = SDPAttention(tiny_transformer_config(), 1, AttnMaskType.causal, "self")
    query, key, value = attention_inputs()
    packed = PackedSeqParams(qkv_format="thd")
    with pytest.raises(ValueError, match="packed"):
        sdpa(query, key, value, None, packed_seq_params=packed)
    with pytest.raises(ValueError, match="attention_bias"):
        sdpa(query, key, value, None, attention_bias=torch.zeros(1, 4, 6, 6))
    with pytest.raises(ValueError, match="sq == sk"):
        sdpa(query, key[:4], value[:4], None)
