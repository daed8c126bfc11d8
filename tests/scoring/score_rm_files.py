"""Files for the score_rm tests: the model, rows written as the tool reads them, and the
tool's output read back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_rm.scoring.batch_job import score_file
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant

MEAN, STD = 0.5, 2.0
"""The reward statistics the test model stores."""


def save_scoring_model(folder: Path, seed: int = 7):
    """A tiny Llama reward model with a ChatML tokenizer and stored reward statistics; returns
    its transformers reference."""
    reference = save_model("llama", folder, seed=seed)
    save_variant(folder, chat=True)
    config = json.loads((folder / "config.json").read_text())
    config["reward_normalization"] = {"mean": [MEAN], "std": [STD]}
    (folder / "config.json").write_text(json.dumps(config))
    return reference


def write_rows(path: Path, rows: list[dict]) -> Path:
    """`rows` as JSON Lines or Parquet, by the path's extension."""
    if path.suffix == ".parquet":
        keys = list(dict.fromkeys(key for row in rows for key in row))
        pq.write_table(pa.table({key: [row.get(key) for row in rows] for key in keys}), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_job(scorer, source: Path, target: Path, **options):
    """The job on `source` (no progress bar); (summary, the output's rows)."""
    summary = score_file(scorer, source, target, progress=False, **options)
    return summary, read_rows(target)


def score_rows(scorer, rows: list[dict], folder: Path, source: str = "in.jsonl", target: str = "out.jsonl",
               **options):
    """The job on `rows` written to folder/source; (summary, the output's rows)."""
    return run_job(scorer, write_rows(folder / source, rows), folder / target, **options)
