"""The frame every training loop runs in: reward-model and SFT training (`training.loop`) and PPO
(`ppo.trainer`). The loop supplies its step, its evaluation and its save; the frame owns what
every run does around them, the same way for all:

- rank 0 alone prints (warnings to stderr) and writes `run.dir`: the resolved `config.yaml` and
  the metrics log (`MetricsLog`);
- SIGTERM is a request to save and stop, agreed by every rank after the same step
  (`StopRequest`);
- evaluation and saving every `eval.interval` and `checkpoint.save_interval` steps, except after
  the last step, whose evaluation and final save are the loop's own;
- a run stopped by SIGTERM leaves `run.dir/stopped.json` naming the step and the checkpoint it
  saved, for a requeue script to read (torchrun's own exit status reports the signal it was
  sent, not how the ranks ended); the next start of the run removes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from megatron_rm.config import LoggingConfig
from megatron_rm.training.metrics_log import MetricsLog
from megatron_rm.training.signals import StopRequest

T = TypeVar("T")
STOPPED = "stopped.json"
"""The marker a run stopped by SIGTERM leaves in `run.dir`, after its checkpoint is complete."""


class RunLifecycle:
    def __init__(self, run_dir: str | Path, config):
        self.run_dir = Path(run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.config = dataclasses.asdict(config)
        self.is_logger = int(os.environ.get("RANK", "0")) == 0

    def say(self, message: str) -> None:
        """Print `message` once, from rank 0; a warning goes to stderr."""
        if self.is_logger:
            print(message, file=sys.stderr if message.startswith("warning") else sys.stdout, flush=True)

    def begin(self) -> None:
        """Rank 0 makes `run.dir`, writes the resolved config and clears an earlier stop's marker."""
        if self.is_logger:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
            (self.run_dir / STOPPED).unlink(missing_ok=True)

    def metrics_log(self, logging: LoggingConfig, since: int | None) -> MetricsLog:
        """The run's metrics log; `since` is the step the run continues after (see `MetricsLog`)."""
        return MetricsLog(self.run_dir, enabled=self.is_logger, logging=logging, config=self.config, since=since)

    def run(self, start: int, total: int, step: Callable[[int], None], finish: Callable[[int], T], *,
            evaluate: Callable[[int], object] | None, save: Callable[[int], None], eval_interval: int,
            save_interval: int) -> T | None:
        """Steps `start + 1` to `total`, each `step(n)` then the SIGTERM agreement, the evaluation
        (`evaluate` None: the run has none) and the save due after it; then `finish(last step)`,
        the loop's final evaluation and save, whose result this returns. None when SIGTERM
        stopped the run (saved, marker written). A SIGTERM during `finish` waits for it."""
        stop = StopRequest()
        try:
            current = start
            while current < total:
                current += 1
                step(current)
                stopping = stop.agreed()
                if evaluate and current < total and eval_interval and current % eval_interval == 0:
                    evaluate(current)
                if stopping or (current < total and save_interval and current % save_interval == 0):
                    save(current)
                if stopping:
                    self._stopped(current)
                    return None
            return finish(current)
        finally:
            stop.restore()

    def _stopped(self, step: int) -> None:
        if self.is_logger:
            marker = {"step": step, "checkpoint": str(self.checkpoints / f"step_{step}"), "signal": "SIGTERM"}
            (self.run_dir / STOPPED).write_text(json.dumps(marker) + "\n")
        self.say(f"stopping after step {step} on SIGTERM; resume with checkpoint.load=auto")
