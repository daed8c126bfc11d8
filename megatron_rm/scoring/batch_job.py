"""Scoring a whole file on a TP/PP/DP job (`tools/score_rm.py`): the rows of `scoring.rows`
(`scoring.token.rows` for a token head) through the file-job frame (`core.file_job`: chunks,
resume, invalid rows, progress)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_rm.core.file_job import JobRow, RowTask, Summary, run_file
from megatron_rm.core.micro_batches import padding_efficiency, plan
from megatron_rm.data.sources import RawRow
from megatron_rm.scoring.rows import prepare_rows, scored_fields
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.scoring.token.rows import prepare_token_rows, token_fields


class ScoreTask(RowTask):
    verb = "scored"

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def prepare(self, raws: list[RawRow]) -> list[JobRow]:
        return prepare_rows(raws, self.scorer.encoder)

    def run(self, sequences: list[list[int]], rows: list[int]):
        return self.scorer.outputs(sequences)

    def fields(self, row, results: torch.Tensor) -> dict:
        return scored_fields(row, results, self.scorer.normalized(results))

    def slots(self, sequences: list[list[int]]) -> float:
        lengths = [len(ids) for ids in sequences]
        settings = self.scorer.settings
        batches = plan(lengths, settings.max_tokens, settings.batching)
        return sum(lengths) / padding_efficiency(batches, lengths, settings.batching)


class TokenScoreTask(ScoreTask):
    """A token head's rows: responses as texts or steps, rewards read from per-token logits."""

    def prepare(self, raws: list[RawRow]) -> list[JobRow]:
        return prepare_token_rows(raws, self.scorer.encoder, self.scorer.reading)

    def fields(self, row, results: list[torch.Tensor]) -> dict:
        return token_fields(row, results, self.scorer.reading)


def score_file(scorer: Scorer, input_path: str | Path, output_path: str | Path, *, on_invalid: str = "error",
               chunk_rows: int = 1024, progress: bool = True) -> Summary | None:
    """Score every row of `input_path` into `output_path`; the summary on rank 0, None elsewhere.

    Collective: every rank of the job calls it. Invalid rows stop the job (`on_invalid="error"`)
    or are written with an `error` field (`"skip"`).
    """
    task = TokenScoreTask(scorer) if scorer.token_head else ScoreTask(scorer)
    return run_file(task, input_path, output_path, on_invalid=on_invalid, chunk_rows=chunk_rows,
                    progress=progress)
