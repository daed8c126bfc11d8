"""Rewards of document batches, through the same forward and schedule training uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from megatron_rm.core.schedule import collect
from megatron_rm.data import Batch
from megatron_rm.model.document_model import unwrap
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.runtime.parallel import Layout


def document_rewards(model_chunks, batches: Iterable[Batch], layout: Layout) -> torch.Tensor:
    """Rewards (documents, num_labels) fp32 for this rank's batches, identical on every pipeline stage.

    Documents follow the batches' layout order. Only the last stage computes them; it
    broadcasts the (documents, num_labels) rewards, never hidden states.
    """
    per_batch = batch_rewards(model_chunks, batches, layout)
    return torch.cat(per_batch) if per_batch else torch.zeros(0, unwrap(model_chunks[0]).num_labels)


def batch_rewards(model_chunks, batches: Iterable[Batch], layout: Layout) -> list[torch.Tensor]:
    """`document_rewards` batch by batch: (documents, num_labels) fp32 for each batch (PPO keeps
    its micro-batches apart)."""
    num_labels = unwrap(model_chunks[0]).num_labels
    return collect(model_chunks, batches, forward_documents, layout,
                   shape=lambda batch: (batch.num_documents, num_labels), dtype=torch.float32)


def token_values(model_chunks, batches: Iterable[Batch], layout: Layout) -> torch.Tensor:
    """The head's output at every real token, (tokens, num_labels) fp32, identical on every
    pipeline stage: the documents of each batch in its layout order, each one's tokens in order
    (a token head's class logits, for outcome and process reward models).

    The last stage broadcasts (rows, seq, num_labels) per batch; padding is dropped here, so
    a document's values are the same padded, packed or alone.
    """
    batches = list(batches)
    num_labels = unwrap(model_chunks[0]).num_labels
    per_batch = collect(model_chunks, batches, lambda model, batch: forward_documents(model, batch, token_values=True),
                        layout, shape=lambda batch: (*batch.input_ids.shape, num_labels), dtype=torch.float32)
    # Rows are read row-major and a packed row numbers its documents along it, so the real
    # tokens come out document after document, in the order the batch was made from.
    real = [values[batch.attention_mask.to(values.device) > 0] for batch, values in zip(batches, per_batch)]
    return torch.cat(real) if real else torch.zeros(0, num_labels)
