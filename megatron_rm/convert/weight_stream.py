"""A live model's weights as whole Hugging Face tensors, straight from its TP/PP shards: what a
rollout engine loads after every actor update, with no checkpoint written to disk.

Each rank's shard of a parameter is described by megatron's own sharding metadata
(`megatron_io.local_pieces`: the global offsets, the swiglu gate/up split, the tied output
layer), so the pieces gathered on the replica's first model-parallel rank fill the whole
parameter exactly as a checkpoint saved at this layout reshards it to TP1/PP1. The whole
parameter then goes through the family's rules (`families.to_hf`) as `export_hf` sends it: the
same names, the same bytes (tested at TP2xPP2).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from megatron_rm.config import POLICY, ModelConfig
from megatron_rm.convert.families import FAMILIES, Shapes, to_hf
from megatron_rm.convert.megatron_io import local_pieces, place
from megatron_rm.model.document_model import unwrap
from megatron_rm.runtime.parallel import Layout


def hf_weights(chunks: list[torch.nn.Module], layout: Layout, model: ModelConfig, kind: str,
               vocab_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, whole tensor) of every parameter of the `kind` model whose shards
    `chunks` hold on this rank, in checkpoint order, on the first rank of this replica's
    model-parallel group; nothing on its other ranks. `vocab_size` is the real vocabulary (the
    embedding's padding rows never leave).

    Collective over the model-parallel group: every rank of it iterates to the end. One
    parameter is whole at a time, on the first rank only.
    """
    group = layout.groups.mp
    ranks = dist.get_process_group_ranks(group)
    first = dist.get_rank() == ranks[0]
    mine: dict[str, list] = {}
    for chunk in chunks:
        for name, pieces in local_pieces(unwrap(chunk)).items():
            mine.setdefault(name, []).extend(
                (piece.global_shape[piece.prepend_axis_num:], place(piece), piece.data.detach().cpu().clone())
                for piece in pieces)
    shapes = Shapes.of(model)
    tied = kind == POLICY and model.tie_word_embeddings
    for rule in FAMILIES[model.family].rules_for(model.num_layers, model.head_bias, kind, tied):
        gathered = [None] * len(ranks) if first else None
        dist.gather_object(mine.pop(rule.megatron, []), gathered, dst=ranks[0], group=group)
        if not first:
            continue
        pieces = [piece for share in gathered for piece in share]
        if not pieces:
            raise RuntimeError(f"no rank of the model-parallel group holds {rule.megatron}")
        whole = torch.empty(pieces[0][0], dtype=pieces[0][2].dtype)
        for _, where, data in pieces:
            whole[where] = data
        yield from zip(rule.hf, to_hf(rule.kind, whole, shapes, rows=vocab_size))
