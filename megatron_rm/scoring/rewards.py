"""Rewards of document batches, through the same forward and schedule training uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from megatron_rm.core.schedule import collect
from megatron_rm.data import Batch
from megatron_rm.model.document_model import unwrap
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.parallel import Layout


def score(model_chunks, batches: Iterable[Batch], layout: Layout) -> torch.Tensor:
    """Rewards (documents, num_labels) fp32 for this rank's batches, identical on every pipeline stage.

    Documents follow the batches' layout order. Only the last stage computes them; it
    broadcasts the (documents, num_labels) rewards, never hidden states.
    """
    batches = list(batches)
    num_labels = unwrap(model_chunks[0]).num_labels
    per_batch = collect(model_chunks, batches, forward_documents, layout,
                        shape=lambda batch: (batch.num_documents, num_labels), dtype=torch.float32)
    return torch.cat(per_batch) if per_batch else torch.zeros(0, num_labels)
