"""Checkpoints of any number of named models and named run states, loadable at any TP/PP.

A checkpoint is a folder `step_<N>` holding each model's sharded tensors (keys
prefixed by the model's name) and, for a trained model, its optimizer's (keyed by
the same parameters); `megatron_rm.json` (see `checkpoint_files`: each model's
architecture and schedule, each state object's `state_dict()`, the layout); each
rank's RNG states in `rng/`; and the tokenizer. It is written under a temporary
name and renamed once every rank has finished, so a folder named `step_<N>` is
always complete; the run's `latest` file is updated only after that, so a save
killed at any moment leaves `latest` naming the previous complete checkpoint.

Model and (non-distributed) optimizer state are sharded tensors keyed by
parameter, so both reshard on load to another TP/PP/DP layout. RNG states are
per rank and are restored only at the same layout.
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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.strategies import filesystem_async

from megatron_rm import runtime
from megatron_rm.config import ModelConfig
from megatron_rm.core.checkpoint_files import (
    RNG_DIR,
    TOKENIZER_DIR,
    ModelEntry,
    model_entry,
    prune,
    read_metadata,
    require_kind,
    resolve,
    write_latest,
    write_metadata,
)
from megatron_rm.data import load_tokenizer, save_tokenizer
from megatron_rm.data.ending import ending_with_eos
from megatron_rm.errors import CheckpointError, DamagedCheckpoint
from megatron_rm.runtime.parallel import Layout

# Fields that decide parameter names and shapes; a checkpoint loads only into a
# model that agrees on all of them.
ARCHITECTURE = (
    "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "ffn_hidden_size", "normalization", "activation", "position_embedding_type",
    "add_bias_linear", "add_qkv_bias", "num_labels", "head_bias", "tie_word_embeddings",
)


@dataclass
class ModelState:
    """One named model of a run: this rank's stage of it and, when trained, its optimizer
    and learning-rate scheduler."""

    module: torch.nn.Module
    config: ModelConfig
    padded_vocab_size: int
    optimizer: Any = None
    scheduler: Any = None
    dtype: str = "float32"
    kind: str = "reward"
    """reward or policy: recorded with the weights, and a checkpoint of the other kind is refused."""

    @property
    def has_optimizer_state(self) -> bool:
        """Whether the model's optimizer holds a state to save. Adam makes its moments at its first
        step, so one that never stepped (PPO's actor during the critic's warm-up) has none; it is
        saved without one and resumes with a fresh optimizer, which is the same thing."""
        if self.optimizer is None:
            return False
        parts = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        return any(len(part.optimizer.state) > 0 for part in parts)

    def _sharded(self, prefix: str, *, loading: bool, with_optimizer: bool) -> dict:
        state = {"model": self.module.sharded_state_dict(prefix=prefix)}
        if with_optimizer:
            state["optimizer"] = self.optimizer.sharded_state_dict(state["model"], is_loading=loading)
        return state


def save(checkpoints_dir: str | Path, step: int, models: dict[str, ModelState], *,
         objects: dict[str, Any] | None = None, layout: Layout | None = None, tokenizer=None,
         keep: int = 0, **extra) -> Path:
    """Write `checkpoints_dir/step_<step>` from every rank, then point `latest` at it and keep the
    `keep` newest (0: all).

    `objects` (name -> anything with `state_dict()`) makes it a checkpoint a run resumes from:
    their states, the `layout` and every rank's RNG are saved with it. `tokenizer`: the run's
    (default: loaded from the first model's config); `extra`: more metadata (JSON values).
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step_{step}"
    staging = final.with_name(f".{final.name}.incomplete")
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    state = {name: model._sharded(f"{name}.", loading=False, with_optimizer=model.has_optimizer_state)
             for name, model in models.items()}
    _start_results_queue_immune_to_sigterm()
    dist_checkpointing.save(state, str(staging))
    if objects is not None:
        (staging / RNG_DIR).mkdir(exist_ok=True)
        torch.save(_rng_state(), staging / RNG_DIR / f"rank_{dist.get_rank():05d}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        first = next(iter(models.values())).config
        # The tokenizer travels inside, so the checkpoint converts and scores on its own.
        # (Passed in by training: a resumed run's tokenizer folder may be inside a checkpoint
        # that `keep` removes.)
        tokenizer = tokenizer or load_tokenizer(first.tokenizer)
        if next(iter(models.values())).kind == "reward" and first.append_eos:
            tokenizer = ending_with_eos(tokenizer)  # scored alike by us and by whoever loads the folder
        save_tokenizer(tokenizer, staging / TOKENIZER_DIR)
        entries = {name: ModelEntry(dataclasses.replace(model.config, tokenizer=TOKENIZER_DIR),
                                    model.padded_vocab_size, model.dtype, prefix=f"{name}.",
                                    optimizer=model.has_optimizer_state,
                                    scheduler=model.scheduler.state_dict() if model.scheduler else None,
                                    kind=model.kind)
                   for name, model in models.items()}
        if objects is not None:
            extra["state"] = {name: obj.state_dict() for name, obj in objects.items()}
            extra["layout"] = layout.sizes()
        write_metadata(staging, step=step, models=entries, **extra)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        write_latest(checkpoints_dir, final)
        prune(checkpoints_dir, keep)
    dist.barrier()
    return final


def check_architecture(directory: Path, saved: ModelEntry, model: ModelState) -> None:
    require_kind(directory, saved, model.kind)
    mismatches = [
        f"model.{name}: checkpoint {getattr(saved.config, name)!r}, this run {getattr(model.config, name)!r}"
        for name in ARCHITECTURE
        if getattr(saved.config, name) != getattr(model.config, name)
    ]
    if saved.padded_vocab_size != model.padded_vocab_size:
        mismatches.append(
            f"padded vocabulary: checkpoint {saved.padded_vocab_size}, this run {model.padded_vocab_size}"
            " (a different tokenizer or model.make_vocab_size_divisible_by)"
        )
    if mismatches:
        raise CheckpointError(f"{directory} does not match this model:\n  " + "\n  ".join(mismatches))


def load(path: str | Path, models: dict[str, ModelState], *, optimizers: bool = False,
         sources: dict[str, str | None] | None = None) -> dict:
    """Load `path`'s weights into each of `models` (any TP/PP), and with `optimizers` each saved
    optimizer state into the model's optimizer; returns the checkpoint's metadata.

    `sources` maps a model to the checkpoint's model it loads from (default: the same name, or
    the checkpoint's only model: a reward model, converted or trained, initialises a model of
    any name). Learning-rate schedules are not touched (`restore_schedulers`). `path` is a
    checkpoint or a run's checkpoints folder (see `resolve`).
    """
    directory = resolve(path)
    metadata = read_metadata(directory)
    state, entries, with_optimizers = {}, {}, set()
    for name, model in models.items():
        source = (sources or {}).get(name, name)
        if name not in (sources or {}) and source not in metadata["models"] and len(metadata["models"]) == 1:
            source = None  # the checkpoint's only model
        entries[name] = entry = model_entry(directory, metadata, source)
        check_architecture(directory, entry, model)
        if optimizers and model.optimizer is not None and entry.optimizer:
            with_optimizers.add(name)
        state[name] = model._sharded(entry.prefix, loading=True, with_optimizer=name in with_optimizers)
    # Format 1 (one model, no prefix) kept the model's tensors at the top level beside "optimizer",
    # and dist_checkpointing finds non-tensor state (the optimizer's step) by that nesting.
    format_1 = len(models) == 1 and next(iter(entries.values())).prefix == ""
    if format_1:
        ((name, parts),) = state.items()
        state = {**parts["model"], **({"optimizer": parts["optimizer"]} if "optimizer" in parts else {})}
    try:
        state = dist_checkpointing.load(state, str(directory))
    except Exception as error:  # megatron raises many kinds here; say which checkpoint failed
        raise DamagedCheckpoint(f"{directory}: could not load: {error}") from error
    if format_1:
        optimizer_state = state.pop("optimizer", None)
        state = {name: {"model": state, "optimizer": optimizer_state}}
    for name, model in models.items():
        prefix = entries[name].prefix
        model.module.load_state_dict({key[len(prefix):]: value for key, value in state[name]["model"].items()})
        # (Only when asked: dist_checkpointing also hands back the saved optimizer's plain values.)
        if name in with_optimizers:
            model.optimizer.load_state_dict(state[name]["optimizer"])
    return metadata


def restore_schedulers(metadata: dict, models: dict[str, ModelState]) -> None:
    for name, model in models.items():
        saved = metadata["models"][name]["scheduler"]
        if model.scheduler is not None and saved is not None:
            model.scheduler.load_state_dict(saved)


def restore_rng(directory: Path, metadata: dict, layout: Layout) -> bool:
    """Restore this rank's RNG states if the checkpoint was saved at this layout."""
    if metadata.get("layout") != layout.sizes():
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
