"""What every GPTModel here shares: document batches in, Hugging Face rope scaling."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_rm.config import RopeScalingConfig
from megatron_rm.model import inputs
from megatron_rm.model.layer_spec import takes_packed_sequences
from megatron_rm.model.rope import scaled_inv_freq


class DocumentGPTModel(GPTModel):
    """megatron-core's GPTModel that takes our document batches (`inputs`: padded, left-padded
    or packed rows, attention kept inside each document) through `self.inputs`, with rotary
    frequencies scaled as the Hugging Face config says. The reward model and the policy
    differ only in their last stage."""

    def __init__(
        self,
        config: TransformerConfig,
        transformer_layer_spec: ModuleSpec,
        vocab_size: int,
        max_sequence_length: int,
        *,
        pre_process: bool,
        post_process: bool,
        position_embedding_type: str = "rope",
        rotary_base: float = 10000.0,
        rope_scaling: RopeScalingConfig | None = None,
        **gpt_options,
    ):
        super().__init__(
            config,
            transformer_layer_spec,
            vocab_size,
            max_sequence_length,
            pre_process=pre_process,
            post_process=post_process,
            position_embedding_type=position_embedding_type,
            rotary_base=rotary_base,
            **gpt_options,
        )
        if rope_scaling is not None and position_embedding_type == "rope":
            self.rotary_pos_emb.inv_freq = scaled_inv_freq(self.rotary_pos_emb, rope_scaling)
        self.inputs = inputs.DecoderInputs(takes_packed_sequences(transformer_layer_spec))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside megatron's wrappers (DDP, Float16Module)."""
    while hasattr(module, "module"):
        module = module.module
    return module
