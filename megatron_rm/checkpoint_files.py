"""What a checkpoint folder holds besides its tensors, and how folders appear complete.

A megatron-rm checkpoint is a dist_checkpointing folder plus `megatron_rm.json`:
the step, the model's architecture (a ModelConfig), the padded vocabulary, the
stored dtype, the sampler's position and, where known, reward statistics and
the Hugging Face source. Its tokenizer lives in `tokenizer/` inside it, so a
checkpoint trains, converts and scores on its own wherever it is copied.
Training (`training/checkpoint.py`) and conversion (`convert/`) both read and
write through this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from megatron_rm.config import ModelConfig
from megatron_rm.errors import CheckpointError

METADATA = "megatron_rm.json"
TOKENIZER_DIR = "tokenizer"
STEP_DIR = re.compile(r"step_(\d+)$")


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or the newest complete `step_<N>` under a run's checkpoints folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or folder")
    if (path / METADATA).is_file():
        return path
    steps = [
        (int(match.group(1)), child)
        for child in path.iterdir()
        if (match := STEP_DIR.match(child.name)) and (child / METADATA).is_file()
    ]
    if not steps:
        raise CheckpointError(
            f"checkpoint {path}: not a megatron-rm checkpoint (no {METADATA}) and holds "
            "no complete step_<N> checkpoint"
        )
    return max(steps)[1]


def write_metadata(directory: Path, *, step: int, model: ModelConfig, padded_vocab_size: int,
                   dtype: str = "float32", **extra) -> None:
    """`extra`: sampler state, reward statistics, the conversion source (JSON values)."""
    metadata = {"step": step, "padded_vocab_size": padded_vocab_size, "dtype": dtype,
                "model": dataclasses.asdict(model), **extra}
    (directory / METADATA).write_text(json.dumps(metadata, indent=2))


def read_metadata(directory: Path) -> dict:
    path = directory / METADATA
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata: {error}") from None


def model_config(directory: Path, metadata: dict) -> ModelConfig:
    """The checkpoint's ModelConfig; a relative tokenizer path found inside it points there."""
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), metadata["model"]))
    except Exception as error:  # omegaconf's validation errors name the field
        raise CheckpointError(f"{directory / METADATA}: bad model config: {error}") from None
    inside = directory / model.tokenizer
    if not Path(model.tokenizer).is_absolute() and inside.is_dir():
        model.tokenizer = str(inside.resolve())
    return model


@contextlib.contextmanager
def atomic_folder(out: str | Path):
    """Yield a staging folder that becomes `out` only if the block completes.

    A failed or killed conversion leaves no folder named `out` (at most a
    `.<name>.incomplete` one), so nothing that looks finished is half-written.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: already exists and is not empty; remove it or choose another")
    staging = out.with_name(f".{out.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(staging, out)
