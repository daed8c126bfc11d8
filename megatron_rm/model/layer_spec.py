"""Which transformer-layer implementation a run uses."""

from __future__ import annotations

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_rm import runtime
from megatron_rm.config import ModelConfig


def uses_transformer_engine(model: ModelConfig) -> bool:
    if model.transformer_impl == "auto":
        return runtime.cuda_available() and runtime.te_available()
    return model.transformer_impl == "transformer_engine"


def transformer_layer_spec(model: ModelConfig) -> ModuleSpec:
    """megatron-core's TE spec when TransformerEngine is in use, its local spec otherwise.

    The local spec takes our dense (batch, 1, seq, seq) block-diagonal causal
    mask; its softmax applies whatever mask it is given. The TE spec takes every
    batch as one packed `thd` sequence cut by cu_seqlens (see
    `inputs.packed_seq_params`), never a dense mask: TE refuses `thd` unless the
    mask type is a padding one, its padding masks on dense (sbhd) inputs assume
    right padding where our rows may be left-padded or packed, and a layer's mask
    type is fixed when it is built, so one module cannot serve both layouts.
    `thd` handles left padding, right padding and packing alike, and lets TE use
    its fused (flash / cuDNN) kernels, which take no arbitrary dense mask.
    """
    if uses_transformer_engine(model):
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        spec = get_gpt_layer_with_transformer_engine_spec()
        spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.padding_causal
        return spec
    return get_gpt_layer_local_spec(normalization=model.normalization)


def takes_packed_sequences(spec: ModuleSpec) -> bool:
    """Whether layers built from `spec` take `thd` packed sequences instead of a dense mask."""
    mask_type = spec.submodules.self_attention.params.get("attn_mask_type")
    return mask_type == AttnMaskType.padding_causal
