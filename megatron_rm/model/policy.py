"""The policy: megatron-core's GPT decoder with its vocabulary-parallel output layer."""

from __future__ import annotations

import torch
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_rm.model import inputs
from megatron_rm.model.document_model import DocumentGPTModel


class PolicyModel(DocumentGPTModel):
    """GPTModel as megatron builds it for language modelling: the last pipeline stage ends in
    the final norm and the (padded vocabulary / TP)-column output layer, or reuses the input
    embedding when `share_embeddings_and_output_weights` (megatron keeps the copies on the
    first and last stages equal).

    forward(input_ids, position_ids, attention_mask) takes the document batches every model
    here takes (see `inputs`) and returns, on the last stage, (batch, seq, padded_vocab / tp)
    logits of this rank's vocabulary shard; other stages return activations for the next.
    Columns at or past `vocab_size` (the real vocabulary) are padding: `vocab_parallel`
    masks them before any softmax, so they never reach a probability or a sample.

    With an `inference_context` (megatron's StaticInferenceContext: a KV cache in each
    attention layer) `attention_mask` is already the (batch, 1, new, cached + new) mask of
    blocked positions, and only each row's last position gets logits, over the whole padded
    vocabulary (megatron gathers the shards): (batch, 1, padded_vocab).
    """

    def __init__(
        self,
        config: TransformerConfig,
        transformer_layer_spec: ModuleSpec,
        padded_vocab_size: int,
        max_sequence_length: int,
        *,
        vocab_size: int,
        pre_process: bool = True,
        post_process: bool = True,
        share_embeddings_and_output_weights: bool = False,
        **positions,
    ):
        super().__init__(config, transformer_layer_spec, padded_vocab_size, max_sequence_length,
                         pre_process=pre_process, post_process=post_process, parallel_output=True,
                         share_embeddings_and_output_weights=share_embeddings_and_output_weights, **positions)
        self.vocab_size = vocab_size
        """The real vocabulary; the output layer has `padded_vocab_size` columns. (GPTModel's
        attribute of this name held the padded size, which it reads only while building.)"""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input: torch.Tensor | None = None,
        inference_context=None,
    ) -> torch.Tensor:
        if inference_context is None:
            args = self.inputs.decoder_args(input_ids, position_ids, attention_mask)
        else:  # megatron's inference path gathers the vocabulary shards (sampling needs them all)
            args = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
                    "runtime_gather_output": True}
        output = super().forward(**args, decoder_input=decoder_input, inference_context=inference_context)
        if not self.post_process or inference_context is not None:
            return output
        # GPTModel returns (batch, seq, shard), or (1, batch * seq, shard) for a packed thd batch.
        return output.reshape(*attention_mask.shape, output.shape[-1])


def forward_logits(model, batch) -> torch.Tensor:
    """A policy (or its DDP wrapper) on a document batch: (rows, seq, vocab shard) logits."""
    return model(batch.input_ids, inputs.position_ids(batch.attention_mask), batch.attention_mask)
