"""What global rank 0 reports: `run.dir/metrics.jsonl`, the console, TensorBoard, W&B."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from megatron_rm.config import LoggingConfig


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool, logging: LoggingConfig | None = None,
                 config: dict | None = None, since: int | None = None):
        """`since`: the step a run starts after; rows of later steps already in metrics.jsonl (a run
        killed after them, before its next checkpoint) are dropped, as the run writes them again:
        one row per step and split, whatever happened. A run that starts afresh (0) starts a new file."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.progress = logging is None or logging.progress
        if enabled and since is not None and self.path.is_file():
            self._drop_after(since)
        self.tensorboard = self.wandb = None
        if not enabled or logging is None:
            return
        if logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if logging.wandb:
            self.wandb = _start_wandb(logging, run_dir, config)

    def write(self, step: int, split: str, summary: dict, **extra) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **summary, **extra}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        scalars = {f"{split}/{k}": v for k, v in row.items()
                   if k not in ("step", "split") and isinstance(v, (int, float)) and v is not None}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.progress:
            print(_line(row), flush=True)

    def _drop_after(self, step: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if step > 0 and (_step(line) is None or _step(line) <= step)]
        if len(kept) < len(lines):
            staging = self.path.with_name(self.path.name + ".tmp")
            staging.write_text("".join(kept), encoding="utf-8")
            staging.replace(self.path)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step(line: str) -> int | None:
    """A metrics row's step; None for a line that is not one (kept as it is)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


PPO_FIELDS = (("reward_mean", "reward", "+.4f"), ("kl", "kl", ".4f"), ("kl_coef", "kl_coef", ".4f"),
              ("policy_loss", "policy loss", "+.4f"), ("value_loss", "value loss", ".4f"),
              ("clip_fraction", "clipped", ".3f"), ("response_length_mean", "length", ".1f"),
              ("eos_fraction", "eos", ".2f"))


def _line(row: dict) -> str:
    """The progress line: what the row has of the usual metrics; pair metrics are absent for data
    without pairs (pointwise labels), and the line then counts documents instead."""
    step = f"{row['step']:6d}" + (f"/{row['total_steps']}" if "total_steps" in row else "")
    parts = [f"{row['split']:5s} step {step}"]
    if "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    if "perplexity" in row:
        parts.append(f"perplexity {row['perplexity']:.2f}")
    if "pairs" in row:
        parts += [f"accuracy {row['accuracy']:.3f}", f"margin {row['margin']:+.3f}", f"pairs {row['pairs']}"]
    elif "documents" in row:
        parts.append(f"documents {row['documents']}")
    # Outcome and process reward models: labelled-token accuracy and the solutions' AUROC.
    for key, label in (("step_accuracy", "step accuracy"), ("token_accuracy", "token accuracy"), ("auroc", "auroc")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.3f}")
    # PPO: the reward, the KL against its coefficient, the actor's and critic's losses.
    if "kl_coef" in row:
        for key, label, form in PPO_FIELDS:
            if row.get(key) is not None:
                parts.append(f"{label} {row[key]:{form}}")
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
    if "lr" in row:
        parts += [f"lr {row['lr']:.2e}", f"grad norm {row['grad_norm']:.3f}"]
    if row.get("skipped_steps"):
        parts.append(f"skipped {row['skipped_steps']}")
    if row["split"] == "eval" and "ece" in row:
        parts.append(f"ece {row['ece']:.3f}")
    if "eta_s" in row:
        parts.append(f"ETA {_duration(row['eta_s'])}")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


def _start_wandb(logging: LoggingConfig, run_dir, config: dict | None):
    import wandb  # config validation has checked that it imports
    # With WANDB_MODE=offline (or no network and mode offline) the run is written under
    # run.dir/wandb for a later `wandb sync`.
    return wandb.init(project=logging.wandb_project, name=logging.wandb_name, dir=str(run_dir),
                      config=config, resume="allow")
