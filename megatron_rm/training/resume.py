"""Where a run starts: which checkpoint (`checkpoint.load`, `checkpoint.init`) and what of it
to restore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_rm.checkpoint_files import candidates, read_metadata, verify
from megatron_rm.config import RMConfig
from megatron_rm.errors import CheckpointError, DamagedCheckpoint
from megatron_rm.training import checkpoint


@dataclass
class Source:
    candidates: list[Path]
    """Best first; the later ones are fallbacks when an earlier one is damaged."""
    resume: bool
    """Restore the training state when the checkpoint has one (checkpoint.load), or take
    only the weights (checkpoint.init)."""


def start_source(cfg: RMConfig) -> Source | None:
    """The checkpoint(s) this run starts from; None for random weights."""
    c = cfg.checkpoint
    if c.load == "auto":
        own = Path(cfg.run.dir) / "checkpoints"
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


def start_metadata(source: Source) -> tuple[Path, dict]:
    """The first candidate whose metadata reads (for its model config, before training starts)."""
    for directory in source.candidates[:-1]:
        try:
            return directory, read_metadata(directory)
        except DamagedCheckpoint:
            continue
    return source.candidates[-1], read_metadata(source.candidates[-1])


@dataclass
class Start:
    step: int = 0
    skipped_steps: int = 0


def restore(source: Source | None, cfg: RMConfig, model, optimizer, scheduler, sampler, layout,
            padded_vocab_size: int, say) -> Start:
    """Load `source` into the model (and, resuming, the optimizer, schedule and RNG); returns
    the step to continue after. `say` prints on the logging rank."""
    if source is None:
        return Start()
    resume = source.resume and cfg.train.max_steps != 0
    with_optimizer = optimizer if resume and cfg.checkpoint.load_optimizer else None
    for i, directory in enumerate(source.candidates):
        try:
            verify(directory)
            metadata = checkpoint.load(model, directory, cfg.model, padded_vocab_size, optimizer=with_optimizer)
            break
        except DamagedCheckpoint as error:
            if i + 1 == len(source.candidates):
                raise
            say(f"warning: {error}\nwarning: falling back to {source.candidates[i + 1]}")
    training = metadata.get("training") if resume else None
    if training is None:
        say(f"loaded weights from {directory} (step {metadata['step']}); this run starts at step 0")
        return Start()
    step = sampler.resume_step(training["sampler"])
    scheduler.load_state_dict(training["scheduler"])
    notes = []
    if not (with_optimizer and training["optimizer"]):
        notes.append("a fresh optimizer state" + (" (checkpoint.load_optimizer=false)" if with_optimizer is None else ""))
    if not checkpoint.restore_rng(directory, training, layout):
        notes.append(f"RNG states not restored (saved at {training['layout']})")
    say(f"resumed from {directory} at step {step}" + "".join(f"; {note}" for note in notes))
    return Start(step, training["skipped_steps"])
