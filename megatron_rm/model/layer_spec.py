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

    Both take our (batch, 1, seq, seq) causal-and-padding mask: the local
    softmax applies whatever mask it is given, and TE is told the mask is
    arbitrary, since its padding kernels assume right padding and a reward
    model's inputs may be left-padded.
    """
    if uses_transformer_engine(model):
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        spec = get_gpt_layer_with_transformer_engine_spec()
        spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.arbitrary
        return spec
    return get_gpt_layer_local_spec(normalization=model.normalization)
