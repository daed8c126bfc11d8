"""The reward model: megatron-core's GPT decoder with a reward head instead of an LM head."""

from __future__ import annotations

import torch
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_block import LayerNormImpl
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_rm.model import inputs
from megatron_rm.model.document_model import DocumentGPTModel
from megatron_rm.model.reward_head import RewardHead


class RewardModel(DocumentGPTModel):
    """GPTModel whose last pipeline stage ends in a TP-sharded reward head.

    GPTModel is built as a trunk (embedding + decoder layers, `post_process=False`
    for the parent), so the (vocab, hidden) output layer a reward model never uses
    is not allocated. The last stage adds the decoder's final norm, which GPTModel
    only builds together with that output layer, under the same name
    (`decoder.final_layernorm`) and from the same module choice as megatron's
    TransformerBlock, and then the reward head.

    forward(input_ids, position_ids, attention_mask) takes a (batch, seq) document
    mask (see `inputs`: 0 = padding, k = the row's k-th document; an ordinary row
    is 0/1, left- or right-padded; a packed row holds documents 1, 2, ... back to
    back). Attention stays inside each document. On the last stage it returns
    (documents, num_labels) fp32 rewards read at each document's last token,
    row-major (one per row, (batch, num_labels), for ordinary rows); on other
    stages the activations for the next stage.

    With the TransformerEngine layer spec the batch runs as one packed `thd`
    sequence, its rows laid end to end (activations (batch * seq, 1, hidden));
    with the local spec as (seq, batch, hidden) under a dense block-diagonal mask.
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
        **positions,
    ):
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length,
                         pre_process=pre_process, post_process=False, **positions)
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
        token_values: bool = False,
    ) -> torch.Tensor:
        """`token_values`: on the last stage return every position's value, (batch, seq,
        num_labels), instead of each document's reward (per-token losses; a critic)."""
        hidden_states = super().forward(
            **self.inputs.decoder_args(input_ids, position_ids, attention_mask), decoder_input=decoder_input)
        if not self.has_reward_head:
            return hidden_states
        if token_values:
            return self.inputs.per_token(self.reward_head.token_values(hidden_states), attention_mask)
        return self.reward_head(hidden_states, *self.inputs.document_ends(attention_mask))


def forward_documents(model, batch, token_values: bool = False) -> torch.Tensor:
    """A reward model (or its DDP wrapper) on a document batch: each document's (documents,
    num_labels) rewards, or with `token_values` every position's (rows, seq, num_labels) values."""
    return model(batch.input_ids, inputs.position_ids(batch.attention_mask), batch.attention_mask,
                 token_values=token_values)
