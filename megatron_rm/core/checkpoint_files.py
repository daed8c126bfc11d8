"""What a checkpoint folder holds besides its tensors, and how folders appear complete.

A megatron-rm checkpoint is a dist_checkpointing folder plus `megatron_rm.json`
(format 2):

    step        the optimizer steps taken
    models      name -> {config (a ModelConfig), padded_vocab_size, dtype, prefix (of the
                model's tensor keys), optimizer (whether its optimizer tensors are saved),
                scheduler (its learning-rate schedule, or null), kind (reward or policy;
                absent, as in checkpoints written before policies existed: reward)}
    state       name -> state_dict() of each object a run restores (sampler, skip guard,
                KL controller, ...); absent in a checkpoint that only holds weights
    layout      {tp, pp, dp} of the run that saved (RNG states restore only at the same)
    ...         reward statistics, the Hugging Face source, ...

Its tokenizer lives in `tokenizer/` inside it, so a checkpoint trains, converts
and scores on its own wherever it is copied. Format 1 (one unnamed model, its
tensors unprefixed, its run state under "training") is read as format 2 by
`read_metadata`, so older checkpoints load everywhere. Training, PPO and
conversion all read and write through this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from megatron_rm.config import MODEL_KINDS, POLICY, REWARD, ModelConfig
from megatron_rm.errors import CheckpointError, DamagedCheckpoint

METADATA = "megatron_rm.json"
FORMAT = 2
DEFAULT_MODEL = "model"
"""The name of a run's one model (a reward model's training run, a converted checkpoint)."""
TOKENIZER_DIR = "tokenizer"
STEP_DIR = re.compile(r"step_(\d+)$")
LATEST = "latest"
RNG_DIR = "rng"
"""Where a resumable checkpoint keeps each rank's RNG states (`rank_<N>.pt`)."""
"""A run's checkpoints folder names its newest complete checkpoint in this file, written last."""


T = TypeVar("T")


def first_usable(found: list[Path], use: Callable[[Path], T], warn: Callable[[str], None]) -> tuple[Path, T]:
    """`use` the first checkpoint of `found` (best first) that is not damaged: (it, what `use`
    returned). A damaged one is reported through `warn` and the next one tried; when the
    last one is damaged too, its error is raised. The one fallback routine for every reader."""
    for i, directory in enumerate(found):
        try:
            return directory, use(directory)
        except DamagedCheckpoint as error:
            if i + 1 == len(found):
                raise
            warn(f"warning: {error}\nwarning: falling back to {found[i + 1]}")
    raise CheckpointError("no checkpoint to use")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or the checkpoint a run's checkpoints folder points at (`latest`,
    else its newest complete step_<N>), after `verify`; see `candidates`."""
    return first_usable(candidates(path), verify, _warn)[0]


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
    named = _latest(path)
    if named in found:
        found = [named] + [child for child in found if child != named]
    if not found:
        raise CheckpointError(
            f"checkpoint {path}: not a megatron-rm checkpoint (no {METADATA}) and holds "
            "no complete step_<N> checkpoint"
        )
    return found


def _latest(checkpoints_dir: Path) -> Path | None:
    """The checkpoint the `latest` file names; None without one, or when it is damaged (bytes
    that are not a name): the newest complete checkpoint is used instead, with a warning."""
    latest = checkpoints_dir / LATEST
    if not latest.is_file():
        return None
    try:
        return checkpoints_dir / latest.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        _warn(f"warning: {latest}: damaged (not UTF-8 text); using the newest complete checkpoint")
        return None


def verify(directory: Path) -> None:
    """Raise CheckpointError naming what is missing or cut short: the metadata, the common state
    file, a tensor file, bytes the tensor index expects (a partial copy or a full disk), or a rank's
    RNG file of a checkpoint a run resumes from."""
    metadata = read_metadata(directory)
    index = directory / ".metadata"
    if not index.is_file():
        raise DamagedCheckpoint(f"{directory}: no tensor index ({index.name}); the checkpoint is incomplete")
    common = directory / "common.pt"
    if not common.is_file():
        raise DamagedCheckpoint(f"{common}: missing; the checkpoint is damaged or incomplete")
    _verify_rng(directory, metadata)
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


def _verify_rng(directory: Path, metadata: dict) -> None:
    """Every rank's RNG file of a resumable checkpoint is there and reads (they are small)."""
    layout = metadata.get("layout")
    if "state" not in metadata or not layout:
        return
    for rank in range(layout["tp"] * layout["pp"] * layout["dp"]):
        file = directory / RNG_DIR / f"rank_{rank:05d}.pt"
        try:
            torch.load(file, weights_only=False)
        except Exception as error:  # missing, or a truncated pickle (which fails in many ways)
            why = "missing" if not file.is_file() else f"unreadable ({type(error).__name__})"
            raise DamagedCheckpoint(f"{file}: {why}; the checkpoint is damaged or incomplete") from None


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


@dataclasses.dataclass
class ModelEntry:
    """One named model of a checkpoint, as `megatron_rm.json` records it."""

    config: ModelConfig
    padded_vocab_size: int
    dtype: str = "float32"
    prefix: str = ""
    """Prefix of the model's tensor keys (its name and a dot; empty in format 1)."""
    optimizer: bool = False
    """Whether its optimizer's state is saved (tensors keyed by the model's parameters)."""
    scheduler: dict | None = None
    kind: str = REWARD
    """reward (a reward head) or policy (a causal LM's output layer): which model the weights
    build. Checkpoints that predate policies hold reward models and have no such field."""

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "config": dataclasses.asdict(self.config)}


def require_kind(directory: Path, entry: ModelEntry, wanted: str, name: str | None = None) -> None:
    """Refuse a checkpoint whose model is not of the `wanted` kind, naming the folder and the kind found."""
    if entry.kind == wanted:
        return
    which = f"model {name!r}" if name else "its model"
    hint = ("a policy comes from a *ForCausalLM folder converted with --model-kind policy, or from training one"
            if wanted == POLICY else "a policy loads with megatron_rm.loading.models.load_policy")
    raise CheckpointError(f"{directory}: {which} is a {entry.kind} model, not a {wanted} model "
                          f"({METADATA}: kind={entry.kind!r}); {hint}")


def write_metadata(directory: Path, *, step: int, models: dict[str, ModelEntry], **extra) -> None:
    """`extra`: run state (`state`, `layout`), reward statistics, the conversion source (JSON values)."""
    metadata = {"format": FORMAT, "step": step, "models": {name: entry.as_json() for name, entry in models.items()},
                **extra}
    (directory / METADATA).write_text(json.dumps(metadata, indent=2))


def read_metadata(directory: Path) -> dict:
    """The checkpoint's metadata in format 2 (format 1 is converted on reading)."""
    path = directory / METADATA
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DamagedCheckpoint(f"{path}: unreadable checkpoint metadata: {error}") from None
    if metadata.get("format", 1) == 1:
        metadata = _from_format_1(metadata)
    if metadata["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {metadata['format']} is newer than this "
                              f"megatron-rm reads ({FORMAT})")
    return metadata


def _from_format_1(old: dict) -> dict:
    """Format 1: one model, its tensors unprefixed and its optimizer's under `optimizer.`; a training
    checkpoint's scheduler, sampler, skipped steps and layout under "training"."""
    training = old.pop("training", None)
    model = {"config": old.pop("model"), "padded_vocab_size": old.pop("padded_vocab_size"),
             "dtype": old.pop("dtype", "float32"), "prefix": "", "optimizer": False, "scheduler": None}
    new = {**old, "format": FORMAT, "models": {"model": model}}
    if training is not None:
        model.update(optimizer=training["optimizer"], scheduler=training["scheduler"])
        new["state"] = {"sampler": training["sampler"],
                        "skip_guard": {"total": training["skipped_steps"], "in_a_row": 0}}
        new["layout"] = training["layout"]
    return new


def model_entry(directory: Path, metadata: dict, name: str | None = None) -> ModelEntry:
    """Model `name` of the checkpoint (None: its only model); a relative tokenizer path found inside
    the checkpoint points there."""
    models = metadata["models"]
    if name is None:
        if len(models) != 1:
            raise CheckpointError(f"{directory} holds models {', '.join(models)}; name the one to load")
        name = next(iter(models))
    if name not in models:
        raise CheckpointError(f"{directory} has no model {name!r} (it holds {', '.join(models)})")
    entry = dict(models[name])
    if entry.get("kind", REWARD) not in MODEL_KINDS:
        raise CheckpointError(f"{directory / METADATA}: model {name!r} has kind={entry['kind']!r} "
                              f"(expected one of {', '.join(MODEL_KINDS)})")
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), entry.pop("config")))
    except Exception as error:  # omegaconf's validation errors name the field
        raise CheckpointError(f"{directory / METADATA}: bad model config: {error}") from None
    inside = directory / model.tokenizer
    if not Path(model.tokenizer).is_absolute() and inside.is_dir():
        model.tokenizer = str(inside.resolve())
    return ModelEntry(model, **entry)


def model_config(directory: Path, metadata: dict, name: str | None = None) -> ModelConfig:
    return model_entry(directory, metadata, name).config


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
