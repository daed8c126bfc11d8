"""`run.dir/metrics.jsonl` and the console line, written by global rank 0."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"

    def write(self, step: int, split: str, summary: dict, **extra) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **summary, **extra}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        line = (
            f"{split:5s} step {step:6d} | loss {row['loss']:.4f} | accuracy {row['accuracy']:.3f}"
            f" | margin {row['margin']:+.3f} | pairs {row['pairs']} | {row['tokens_per_s']:,.0f} tok/s"
            f" | padding efficiency {row['padding_efficiency']:.2f}"
        )
        if "lr" in row:
            line += f" | lr {row['lr']:.2e}"
        print(line, flush=True)
