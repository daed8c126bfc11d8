"""Where a run starts: which checkpoint (`checkpoint.load`, `checkpoint.init`) and what of it
to restore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_rm.config import CheckpointConfig
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import candidates, first_usable, read_metadata
from megatron_rm.errors import CheckpointError
from megatron_rm.runtime.parallel import Layout


@dataclass
class Source:
    candidates: list[Path]
    """Best first; the later ones are fallbacks when an earlier one is damaged."""
    resume: bool
    """Restore the run's state when the checkpoint has one (checkpoint.load), or take
    only the weights (checkpoint.init)."""


def start_source(c: CheckpointConfig, run_dir: str | Path) -> Source | None:
    """The checkpoint(s) a run in `run_dir` starts from; None for random weights."""
    if c.load == "auto":
        own = Path(run_dir) / "checkpoints"
        if own.is_dir():
            try:
                return Source(candidates(own), resume=True)
            except CheckpointError:
                pass  # nothing complete saved yet: a fresh start
    elif c.load:
        return Source(candidates(c.load), resume=True)
    if c.init:
        return Source(candidates(c.init), resume=False)
    return None


def start_metadata(source: Source, say: Callable[[str], None]) -> tuple[Path, dict]:
    """The first candidate whose metadata reads (for its model config, before training starts)."""
    return first_usable(source.candidates, read_metadata, say)


def restore(source: Source | None, models: dict[str, checkpoint.ModelState], objects: dict[str, Any],
            layout: Layout, say: Callable[[str], None], *, resume: bool, load_optimizer: bool) -> int:
    """Load `source` into `models` and, resuming a run's checkpoint, their optimizers and
    schedules, `objects` (name -> anything with `load_state_dict`) and the RNG; returns the
    step to continue after (0 for a fresh start). `resume=False` takes weights only."""
    if source is None:
        return 0
    resume = resume and source.resume

    # checkpoint.load verifies the folder before reading it (a damaged one falls back here).
    directory, metadata = first_usable(
        source.candidates, lambda directory: checkpoint.load(directory, models, optimizers=resume and load_optimizer),
        say)
    if not resume or "state" not in metadata:
        say(f"loaded weights from {directory} (step {metadata['step']}); this run starts at step 0")
        return 0
    checkpoint.restore_schedulers(metadata, models)
    for name, obj in objects.items():
        obj.load_state_dict(metadata["state"][name])
    notes = []
    # A model saved with no optimizer state had not stepped yet (PPO's actor during the critic's
    # warm-up): its fresh optimizer is the one it had.
    unstepped = [name for name in models if not metadata["models"][name]["optimizer"]]
    if not load_optimizer:
        notes.append("a fresh optimizer state (checkpoint.load_optimizer=false)")
    elif unstepped:
        notes.append(f"{', '.join(unstepped)} had not stepped: a fresh optimizer state")
    if not checkpoint.restore_rng(directory, metadata, layout):
        notes.append(f"RNG states not restored (saved at {metadata['layout']})")
    say(f"resumed from {directory} at step {metadata['step']}" + "".join(f"; {note}" for note in notes))
    return metadata["step"]
