"""Process groups: the one place that starts torch.distributed and megatron's parallel state.

Everything else gets its process groups from a `Layout` (megatron's
ProcessGroupCollection in `layout.groups`) instead of reading parallel_state.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_rm import runtime
from megatron_rm.config import ParallelConfig


@dataclass(frozen=True)
class Layout:
    """This rank's place in the tp x pp x dp grid."""

    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    groups: ProcessGroupCollection = field(compare=False, repr=False)
    """megatron's process groups of this rank: tp, pp, dp, ... (what megatron's modules take)."""

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def sizes(self) -> dict:
        """{tp, pp, dp}: what a checkpoint records to tell whether per-rank state restores here."""
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp}

    def place(self) -> dict:
        """This rank's coordinates in the grid, as plain values (for logs and reports)."""
        return {name: getattr(self, name) for name in ("world_size", "rank", "tp", "pp", "dp", "tp_rank", "pp_rank",
                                                       "dp_rank")}


def init_distributed() -> None:
    """Join the torchrun job (or start a one-process job when launched without torchrun)."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # megatron-core's tensor-parallel layers overlap their all-reduce with compute only
    # when GPU kernels queue on one hardware connection (it warns otherwise, on CPU too).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    if runtime.cuda_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=runtime.backend())


def initialize(parallel: ParallelConfig, seed: int) -> Layout:
    """Create megatron's TP/PP/DP groups and seed every RNG for this rank.

    Call after the run's checks (`training.checks.validate`). Weights initialise from
    `seed + 100 * pp_rank` (each stage holds different layers), identically on every TP rank: on
    the CPU the full weight is drawn and then split, so the model is the same at any TP. Python's
    and NumPy's global generators take the same seed, so that every RNG a checkpoint saves starts
    alike in every run of the config (and a resumed run goes on exactly as an uninterrupted one).
    """
    init_distributed()
    runtime.cpu_compat.enable()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp
    )
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)
    torch.manual_seed(stage_seed)
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    return layout()


PROCESS_GROUPS = ["tp", "pp", "mp", "cp", "tp_cp", "embd", "pos_embd", "dp", "dp_cp"]
"""The groups a dense GPT model, its schedule and its optimizer use (no experts)."""


def layout() -> Layout:
    return Layout(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        pp=parallel_state.get_pipeline_model_parallel_world_size(),
        dp=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        groups=ProcessGroupCollection.use_mpu_process_groups(required_pgs=PROCESS_GROUPS),
    )


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_last_stage(tensor: torch.Tensor | None, shape, dtype, layout: Layout) -> torch.Tensor:
    """Give every pipeline stage the last stage's `tensor` (others pass None).

    Used for rewards, per-token values and metric sums: tensors of a micro-batch's
    output size, never hidden states.
    """
    if layout.pp == 1:
        return tensor
    if layout.is_last_stage:
        buffer = tensor.detach().to(dtype).contiguous()
    else:
        buffer = torch.empty(shape, dtype=dtype, device=runtime.device())
    last = dist.get_process_group_ranks(layout.groups.pp)[-1]
    dist.broadcast(buffer, src=last, group=layout.groups.pp)
    return buffer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broadcast_sequences(sequences: list[list[int]] | None, src: int = 0) -> list[list[int]]:
    """Rank `src`'s sequences on every rank (others pass None), as two tensors: lengths, then ids.
    Only integers cross the wire: nothing a client sent is unpickled anywhere."""
    device = runtime.device()
    count = torch.tensor([len(sequences) if dist.get_rank() == src else 0], dtype=torch.int64, device=device)
    dist.broadcast(count, src)
    if dist.get_rank() == src:
        lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.int64, device=device)
    else:
        lengths = torch.empty(int(count), dtype=torch.int64, device=device)
    dist.broadcast(lengths, src)
    total = int(lengths.sum())
    if dist.get_rank() == src:
        flat = torch.tensor([t for ids in sequences for t in ids], dtype=torch.int64, device=device)
    else:
        flat = torch.empty(total, dtype=torch.int64, device=device)
    dist.broadcast(flat, src)
    return [piece.tolist() for piece in flat.cpu().split(lengths.cpu().tolist())]


def all_replicas(items: list, layout) -> list:
    """Every data-parallel replica's `items`, concatenated in replica order, on every rank (each
    replica's ranks hold the same items)."""
    if layout.dp == 1:
        return list(items)
    gathered = [None] * layout.dp
    dist.all_gather_object(gathered, items, group=layout.groups.dp)
    return [item for share in gathered for item in share]


def gather_to_first(done: list, layout) -> list | None:
    """Every replica's completions on global rank 0 (None on every other rank). Each replica's
    ranks hold the same completions; those in rank 0's data-parallel group send theirs."""
    if layout.dp == 1:
        return [done] if dist.get_rank() == 0 else None
    group = layout.groups.dp
    first = dist.get_process_group_ranks(group)[0]
    gathered = [None] * layout.dp if dist.get_rank() == first else None
    dist.gather_object(done, gathered, dst=first, group=group)
    return gathered if dist.get_rank() == 0 else None
