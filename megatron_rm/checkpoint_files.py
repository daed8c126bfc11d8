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
import warnings
from pathlib import Path

from omegaconf import OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from megatron_rm.config import ModelConfig
from megatron_rm.errors import CheckpointError, DamagedCheckpoint

METADATA = "megatron_rm.json"
TOKENIZER_DIR = "tokenizer"
STEP_DIR = re.compile(r"step_(\d+)$")
LATEST = "latest"
"""A run's checkpoints folder names its newest complete checkpoint in this file, written last."""


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or the checkpoint a run's checkpoints folder points at (`latest`,
    else its newest complete step_<N>), after `verify`; see `candidates`."""
    found = candidates(path)
    for directory in found[:-1]:
        try:
            verify(directory)
            return directory
        except DamagedCheckpoint as error:
            warnings.warn(f"{error}; falling back to an older checkpoint", stacklevel=2)
    verify(found[-1])
    return found[-1]


def candidates(path: str | Path) -> list[Path]:
    """Checkpoints `path` names, best first: a checkpoint folder itself; for a run's
    checkpoints folder the one `latest` names, then every other complete step_<N>, newest
    first (what to fall back to when the newest is damaged)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or folder")
    if (path / METADATA).is_file():
        return [path]
    steps = sorted(((int(match.group(1)), child) for child in path.iterdir()
                    if (match := STEP_DIR.match(child.name)) and (child / METADATA).is_file()), reverse=True)
    found = [child for _, child in steps]
    latest = path / LATEST
    if latest.is_file() and (path / latest.read_text().strip()) in found:
        named = path / latest.read_text().strip()
        found = [named] + [child for child in found if child != named]
    if not found:
        raise CheckpointError(
            f"checkpoint {path}: not a megatron-rm checkpoint (no {METADATA}) and holds "
            "no complete step_<N> checkpoint"
        )
    return found


def verify(directory: Path) -> None:
    """Raise CheckpointError naming what is missing or cut short: the metadata, a tensor
    file, or bytes the tensor index expects (a partial copy or a full disk)."""
    read_metadata(directory)
    index = directory / ".metadata"
    if not index.is_file():
        raise DamagedCheckpoint(f"{directory}: no tensor index ({index.name}); the checkpoint is incomplete")
    try:
        storage = FileSystemReader(str(directory)).read_metadata().storage_data
    except Exception as error:  # a truncated pickle fails in many ways
        raise DamagedCheckpoint(f"{index}: unreadable tensor index: {error}") from None
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = directory / name
        actual = file.stat().st_size if file.is_file() else None
        if actual is None or actual < size:
            state = "missing" if actual is None else f"{actual} bytes, {size} expected"
            raise DamagedCheckpoint(f"{file}: {state}; the checkpoint is damaged or incomplete")


def write_latest(checkpoints_dir: Path, directory: Path) -> None:
    """Point `latest` at `directory` (atomically: a reader sees the old or the new name)."""
    staging = checkpoints_dir / f".{LATEST}.tmp"
    staging.write_text(directory.name + "\n")
    os.replace(staging, checkpoints_dir / LATEST)


def prune(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Remove all but the `keep` newest complete checkpoints (never the one `latest` names)
    and any staging folder a killed save left; returns what was removed."""
    removed = [child for child in checkpoints_dir.glob(".step_*.incomplete")]
    if keep:
        complete = candidates(checkpoints_dir)
        removed += sorted(complete[keep:], key=lambda p: int(STEP_DIR.match(p.name).group(1)))
    for child in removed:
        shutil.rmtree(child, ignore_errors=True)
    return removed


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
        raise DamagedCheckpoint(f"{path}: unreadable checkpoint metadata: {error}") from None


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
