"""Which transformer-layer implementation a run uses."""

from __future__ import annotations

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_rm import runtime
from megatron_rm.config import ModelConfig
from megatron_rm.model.linear import GradFreeColumnParallelLinear, GradFreeRowParallelLinear
from megatron_rm.model.sdpa_attention import SDPAttention
from megatron_rm.model.self_attention import RotatedCacheSelfAttention


def uses_transformer_engine(model: ModelConfig) -> bool:
    if model.transformer_impl == "auto":
        return runtime.cuda_available() and runtime.te_available()
    return model.transformer_impl == "transformer_engine"


def layer_implementation(model: ModelConfig) -> str:
    """The layers `transformer_layer_spec(model)` builds: transformer_engine, sdpa or local."""
    if uses_transformer_engine(model):
        return "transformer_engine"
    return "local" if model.transformer_impl == "local" else "sdpa"


def transformer_layer_spec(model: ModelConfig) -> ModuleSpec:
    """megatron-core's TE spec when TransformerEngine is in use, else its local spec,
    with torch SDPA as the core attention unless `transformer_impl=local`, a
    self-attention whose KV cache (generation) holds rotated keys (`self_attention`), and
    linear layers that skip autograd's bookkeeping when no gradient is taken (`linear`).

    The local and sdpa specs take our dense (batch, 1, seq, seq) block-diagonal causal
    mask; both apply whatever mask they are given, and share every weight name (the
    core attention holds none), so one checkpoint serves both. The TE spec takes every
    batch as one packed `thd` sequence cut by cu_seqlens (see
    `inputs.packed_seq_params`), never a dense mask: TE refuses `thd` unless the
    mask type is a padding one, its padding masks on dense (sbhd) inputs assume
    right padding where our rows may be left-padded or packed, and a layer's mask
    type is fixed when it is built, so one module cannot serve both layouts.
    `thd` handles left padding, right padding and packing alike, and lets TE use
    its fused (flash / cuDNN) kernels, which take no arbitrary dense mask.
    """
    implementation = layer_implementation(model)
    if implementation == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        spec = get_gpt_layer_with_transformer_engine_spec()
        spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.padding_causal
        return spec
    spec = get_gpt_layer_local_spec(normalization=model.normalization)
    attention, mlp = spec.submodules.self_attention, spec.submodules.mlp
    attention.module = RotatedCacheSelfAttention
    attention.submodules.linear_qkv = mlp.submodules.linear_fc1 = GradFreeColumnParallelLinear
    attention.submodules.linear_proj = mlp.submodules.linear_fc2 = GradFreeRowParallelLinear
    if implementation == "sdpa":
        attention.submodules.core_attention = SDPAttention
    return spec


def takes_packed_sequences(spec: ModuleSpec) -> bool:
    """Whether layers built from `spec` take `thd` packed sequences instead of a dense mask."""
    mask_type = spec.submodules.self_attention.params.get("attn_mask_type")
    return mask_type == AttnMaskType.padding_causal
