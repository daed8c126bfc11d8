"""The reward model: megatron-core's GPT decoder with a reward head instead of an LM head."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_block import LayerNormImpl
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_rm.model import inputs
from megatron_rm.model.reward_head import RewardHead


class RewardModel(GPTModel):
    """GPTModel whose last pipeline stage ends in a TP-sharded reward head.

    GPTModel is built as a trunk (embedding + decoder layers, `post_process=False`
    for the parent), so the (vocab, hidden) output layer a reward model never uses
    is not allocated. The last stage adds the decoder's final norm, which GPTModel
    only builds together with that output layer, under the same name
    (`decoder.final_layernorm`) and from the same module choice as megatron's
    TransformerBlock, and then the reward head.

    forward(input_ids, position_ids, attention_mask) takes a (batch, seq) padding
    mask (1 = real token, left or right padding). On the last stage it returns
    (batch, num_labels) fp32 rewards read at each row's last real token; on other
    stages the (seq, batch, hidden) activations for the next stage.
    """

    def __init__(
        self,
        config: TransformerConfig,
        transformer_layer_spec: ModuleSpec,
        vocab_size: int,
        max_sequence_length: int,
        *,
        num_labels: int = 1,
        head_bias: bool = False,
        head_init_std: float = 0.02,
        pre_process: bool = True,
        post_process: bool = True,
        position_embedding_type: str = "rope",
        rotary_base: int = 10000,
    ):
        super().__init__(
            config,
            transformer_layer_spec,
            vocab_size,
            max_sequence_length,
            pre_process=pre_process,
            post_process=False,
            position_embedding_type=position_embedding_type,
            rotary_base=rotary_base,
        )
        self.has_reward_head = post_process
        self.num_labels = num_labels
        if post_process:
            self.decoder.final_layernorm = build_module(
                LayerNormImpl,
                config=config,
                hidden_size=config.hidden_size,
                eps=config.layernorm_epsilon,
            )
            self.reward_head = RewardHead(
                config, num_labels, head_bias, head_init_std, self.pg_collection.tp
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = super().forward(
            input_ids,
            position_ids,
            inputs.causal_padding_mask(attention_mask),
            decoder_input=decoder_input,
        )
        if not self.has_reward_head:
            return hidden_states
        return self.reward_head(hidden_states, inputs.last_token_index(attention_mask))
