"""Rotary position embeddings as Hugging Face configures them."""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from megatron_rm.config import RopeScalingConfig


def scaled_inv_freq(rope: RotaryEmbedding, scaling: RopeScalingConfig) -> torch.Tensor:
    """`rope`'s inverse frequencies under Hugging Face's `rope_scaling` (llama3 or linear).

    GPTModel's own llama3 option fixes the low/high frequency factors and the original
    context at Llama 3.1's values; models that set others need them passed through.
    """
    if scaling.rope_type == "linear":
        return rope.inv_freq / scaling.factor
    return rope._apply_scaling(
        rope.inv_freq,
        factor=scaling.factor,
        low_freq_factor=scaling.low_freq_factor,
        high_freq_factor=scaling.high_freq_factor,
        original_max_position_embeddings=scaling.original_max_position_embeddings,
    )
