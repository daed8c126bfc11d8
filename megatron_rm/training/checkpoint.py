"""Training checkpoints in megatron's dist_checkpointing format, loadable at any TP/PP.

A checkpoint is a folder `step_<N>` holding the sharded tensors (the model's and,
for a training checkpoint, the optimizer's under `optimizer.`), `megatron_rm.json`
(the step, the model's architecture, and the run's state: learning-rate schedule,
data position, skipped steps, the layout), each rank's RNG states in `rng/`, and
the tokenizer. It is written under a temporary name and renamed once every rank
has finished, so a folder named `step_<N>` is always complete; the run's
`latest` file is updated only after that, so a save killed at any moment leaves
`latest` naming the previous complete checkpoint.

Both the model and megatron's (non-distributed) optimizer state are saved as
sharded tensors keyed by parameter, so both reshard on load to another TP/PP/DP
layout. RNG states are per rank and are restored only at the same layout.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.managers
import random
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.strategies import filesystem_async

from megatron_rm import runtime
from megatron_rm.checkpoint_files import (  # noqa: F401  (METADATA, resolve: part of this API)
    METADATA,
    TOKENIZER_DIR,
    candidates,
    prune,
    read_metadata,
    resolve,
    verify,
    write_latest,
    write_metadata,
)
from megatron_rm.config import ModelConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError, DamagedCheckpoint

# Fields that decide parameter names and shapes; a checkpoint loads only into a
# model that agrees on all of them.
ARCHITECTURE = (
    "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "ffn_hidden_size", "normalization", "activation", "position_embedding_type",
    "add_bias_linear", "add_qkv_bias", "num_labels", "head_bias",
)
RNG_DIR = "rng"


@dataclass
class TrainingState:
    """What resumes a run besides tensors; JSON in megatron_rm.json under "training"."""

    scheduler: dict
    sampler: dict
    skipped_steps: int
    layout: dict
    """tp, pp, dp of the run that saved: RNG states are per rank and restore only at the same."""
    optimizer: bool = True
    """Whether the optimizer's tensors are in the checkpoint."""


def save(model, checkpoints_dir: str | Path, step: int, model_config: ModelConfig,
         padded_vocab_size: int, *, tokenizer=None, optimizer=None, training: TrainingState | None = None,
         keep: int = 0, **extra) -> Path:
    """Write `checkpoints_dir/step_<step>` from every rank, then point `latest` at it and
    keep the `keep` newest (0: all). `tokenizer`: the run's (default: loaded from
    model_config.tokenizer); `extra`: more metadata (reward_normalization)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step_{step}"
    staging = final.with_name(f".{final.name}.incomplete")
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    state = model.sharded_state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state)
    _start_results_queue_immune_to_sigterm()
    dist_checkpointing.save(state, str(staging))
    if training is not None:
        (staging / RNG_DIR).mkdir(exist_ok=True)
        torch.save(_rng_state(), staging / RNG_DIR / f"rank_{dist.get_rank():05d}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        # The tokenizer travels inside, so the checkpoint converts and scores on its own.
        # (Passed in by training: a resumed run's tokenizer folder may be inside a checkpoint
        # that `keep` removes.)
        (tokenizer or load_tokenizer(model_config.tokenizer)).save_pretrained(staging / TOKENIZER_DIR)
        recorded = dataclasses.replace(model_config, tokenizer=TOKENIZER_DIR)
        if training is not None:
            extra["training"] = dataclasses.asdict(training)
        write_metadata(staging, step=step, model=recorded, padded_vocab_size=padded_vocab_size, **extra)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        write_latest(checkpoints_dir, final)
        prune(checkpoints_dir, keep)
    dist.barrier()
    return final


def check_architecture(directory: Path, metadata: dict, model_config: ModelConfig, padded_vocab_size: int) -> None:
    saved = metadata["model"]
    mismatches = [
        f"model.{name}: checkpoint {saved.get(name)!r}, this run {getattr(model_config, name)!r}"
        for name in ARCHITECTURE
        if saved.get(name) != getattr(model_config, name)
    ]
    if metadata["padded_vocab_size"] != padded_vocab_size:
        mismatches.append(
            f"padded vocabulary: checkpoint {metadata['padded_vocab_size']}, this run {padded_vocab_size}"
            " (a different tokenizer or model.make_vocab_size_divisible_by)"
        )
    if mismatches:
        raise CheckpointError(f"{directory} does not match this model:\n  " + "\n  ".join(mismatches))


def load(model, path: str | Path, model_config: ModelConfig, padded_vocab_size: int, *,
         optimizer=None) -> dict:
    """Load `path`'s weights into this rank's model (any TP/PP), and its optimizer state into
    `optimizer` when given and saved; returns the checkpoint's metadata. `path` is a
    checkpoint or a run's checkpoints folder (see `resolve`)."""
    directory = resolve(path)
    metadata = read_metadata(directory)
    check_architecture(directory, metadata, model_config, padded_vocab_size)
    with_optimizer = optimizer is not None and metadata.get("training", {}).get("optimizer", False)
    state = model.sharded_state_dict()
    if with_optimizer:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True)
    try:
        state = dist_checkpointing.load(state, str(directory))
    except Exception as error:  # megatron raises many kinds here; say which checkpoint failed
        raise DamagedCheckpoint(f"{directory}: could not load: {error}") from error
    optimizer_state = state.pop("optimizer", None)
    model.load_state_dict(state)
    if with_optimizer:
        optimizer.load_state_dict(optimizer_state)
    return metadata


def restore_rng(directory: Path, training: dict, layout) -> bool:
    """Restore this rank's RNG states if the checkpoint was saved at this layout."""
    if training["layout"] != {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp}:
        return False
    states = torch.load(directory / RNG_DIR / f"rank_{dist.get_rank():05d}.pt", weights_only=False)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if runtime.cuda_available():
        torch.cuda.set_rng_state(states["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(states["tracker"])
    return True


_queue_managers = []


def _start_results_queue_immune_to_sigterm() -> None:
    """Start the process that serves megatron's checkpoint-writer results queue, ignoring SIGTERM.

    megatron spawns that server once per process, inside this rank's process group,
    and torchrun relays SIGTERM to the whole group: the server would die exactly when
    the SIGTERM checkpoint needs it. Started here first (megatron reuses it), it ignores
    SIGTERM; SIGKILL, which torchrun sends to the group after its grace period, still ends it.
    """
    if filesystem_async._results_queue is None:
        manager = multiprocessing.managers.SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_IGN))
        _queue_managers.append(manager)  # serves for the life of this process
        filesystem_async._results_queue = manager.Queue()


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if runtime.cuda_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
