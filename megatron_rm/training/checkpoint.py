"""Model checkpoints in megatron's dist_checkpointing format, loadable at any TP/PP.

A checkpoint is a folder `step_<N>` holding the sharded tensors,
`megatron_rm.json` (the step, the model's architecture and the data sampler's
position, from which the data order resumes; see `checkpoint_files`) and the
tokenizer. It is written under
a temporary name and renamed once every rank has finished, so a folder named
`step_<N>` is always complete.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing

from megatron_rm.checkpoint_files import (  # noqa: F401  (METADATA, resolve: part of this API)
    METADATA,
    TOKENIZER_DIR,
    read_metadata,
    resolve,
    write_metadata,
)
from megatron_rm.config import ModelConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError

# Fields that decide parameter names and shapes; a checkpoint loads only into a
# model that agrees on all of them.
ARCHITECTURE = (
    "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "ffn_hidden_size", "normalization", "activation", "position_embedding_type",
    "add_bias_linear", "add_qkv_bias", "num_labels", "head_bias",
)


def save(model, checkpoints_dir: str | Path, step: int, model_config: ModelConfig,
         padded_vocab_size: int, sampler_state: dict | None = None) -> Path:
    """Write `checkpoints_dir/step_<step>` from every rank; returns its path."""
    final = Path(checkpoints_dir) / f"step_{step}"
    staging = final.with_name(f".{final.name}.incomplete")
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(staging))
    dist.barrier()
    if dist.get_rank() == 0:
        # The tokenizer travels inside, so the checkpoint converts and scores on its own.
        load_tokenizer(model_config.tokenizer).save_pretrained(staging / TOKENIZER_DIR)
        recorded = dataclasses.replace(model_config, tokenizer=TOKENIZER_DIR)
        write_metadata(staging, step=step, model=recorded, padded_vocab_size=padded_vocab_size,
                       sampler=sampler_state)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    dist.barrier()
    return final


def load(model, path: str | Path, model_config: ModelConfig, padded_vocab_size: int) -> int:
    """Load weights into this rank's model (any TP/PP); returns the checkpoint's step."""
    directory = resolve(path)
    metadata = read_metadata(directory)
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
        raise CheckpointError(
            f"{directory} does not match this model:\n  " + "\n  ".join(mismatches)
        )
    try:
        state_dict = dist_checkpointing.load(model.sharded_state_dict(), str(directory))
    except Exception as error:  # megatron raises many kinds here; say which checkpoint failed
        raise CheckpointError(f"{directory}: could not load: {error}") from error
    model.load_state_dict(state_dict)
    return metadata["step"]
