"""megatron's self-attention with a static KV cache that holds keys already rotated.

megatron-core's static-batching KV cache (`StaticInferenceContext`, the one generation
uses) stores each key before its rotary embedding and rotates the whole cache again at
every decoding step, in every layer: work that grows with the cached length, for every
new token. Its dynamic-batching cache rotates a key once, before storing it; so does this
class, for the static cache, rotating the new queries and keys in one call. Rotary is
elementwise per position, so queries and cached keys are bit for bit what megatron's
rotation would give, and the attention is unchanged. Without an inference context
(training, scoring) nothing differs from megatron's.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention


class RotatedCacheSelfAttention(SelfAttention):
    """`SelfAttention` (same parameters and checkpoint names) whose static KV cache holds
    rotated keys."""

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb, *args,
                                        **kwargs):
        if (inference_context is not None and inference_context.is_static_batching()
                and rotary_pos_emb is not None and not self.config.flash_decode):
            query, key = self._rotate(query, key, rotary_pos_emb[0], inference_context.sequence_len_offset)
            rotary_pos_emb = None  # nothing left to rotate
        return super()._adjust_key_value_for_inference(inference_context, query, key, value, rotary_pos_emb,
                                                       *args, **kwargs)

    def _rotate(self, query, key, freqs, start: int):
        """The new positions' queries (s, b, np, hn) and keys (s, b, ng, hn) rotated, the
        first at position `start`: one call over both (self-attention's query and key
        positions are the same)."""
        both = apply_rotary_pos_emb(torch.cat([query, key], dim=2), freqs[start:start + query.shape[0]],
                                    config=self.config, mscale=_yarn_get_concentration_factor_from_config(self.config),
                                    cp_group=self.pg_collection.cp)
        return both.split([query.shape[2], key.shape[2]], dim=2)
