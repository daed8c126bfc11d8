"""Judging every pair of a file on a TP/PP/DP job (`tools/judge.py`), through the file-job frame
(`core.file_job`: chunks, resume, invalid rows, progress). Each valid row is two sequences, its
judging prompts in both orders; it gains `preference`, `preference_as_a`, `preference_as_b` and
`label_mass` (see `judge.Verdict`)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_rm.core.file_job import JobRow, RowTask, Summary, run_file
from megatron_rm.data.rows import Invalid, RowProblem, decode
from megatron_rm.data.sources import RawRow
from megatron_rm.judge.judge import Judge, verdict


class JudgeTask(RowTask):
    verb = "judged"

    def __init__(self, judge: Judge):
        self.judge = judge

    def prepare(self, raws: list[RawRow]) -> list[JobRow]:
        rows = []
        for raw, documents in zip(raws, self.judge.documents(raws)):
            row = JobRow(raw.location)
            try:
                row.fields = decode(raw.payload)
            except Invalid:
                pass  # not an object: its problem says so, and it is written without its fields
            if isinstance(documents, RowProblem):
                row.problem = documents
            else:
                row.sequences = documents
            rows.append(row)
        return rows

    def run(self, sequences: list[list[int]], rows: list[int]) -> torch.Tensor:
        return self.judge.label_logprobs(sequences)

    def fields(self, row: JobRow, results: torch.Tensor) -> dict:
        found = verdict(*results.tolist())
        return {"preference": found.preference, "preference_as_a": found.as_a, "preference_as_b": found.as_b,
                "label_mass": found.label_mass}


def judge_file(judge: Judge, input_path: str | Path, output_path: str | Path, *, on_invalid: str = "error",
               chunk_rows: int = 1024, progress: bool = True) -> Summary | None:
    """Judge every row of `input_path` into `output_path` (collective); the summary on rank 0."""
    return run_file(JudgeTask(judge), input_path, output_path, on_invalid=on_invalid, chunk_rows=chunk_rows,
                    progress=progress)
