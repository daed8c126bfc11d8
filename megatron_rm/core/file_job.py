"""A file of rows in, the same rows with fields added out, on a whole TP/PP/DP job: the
frame `score_rm` and `generate` share.

Rank 0 reads, validates, encodes and writes; every rank computes. Before each chunk rank 0
broadcasts what comes next (a chunk, the end, or a stop with its message), so an error on
rank 0 ends every rank the same way instead of leaving them waiting in a collective. A chunk
is validated whole before it is computed, and written whole after, so the output always
ends on a chunk of complete rows and a rerun resumes from there. Only integers (token ids and
row numbers) cross ranks.

A `RowTask` says what is done to the rows: how a chunk of raw rows becomes token sequences
(`prepare`, rank 0), the collective computation on all of a chunk's sequences (`run`, every
rank), and the fields each row gains (`fields`, rank 0).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch.distributed as dist
from tqdm import tqdm

from megatron_rm.core.row_output import RowOutput
from megatron_rm.data.rows import ProblemLog, RowProblem
from megatron_rm.data.sources import FILE_FORMATS, RawRow, iter_raw_rows
from megatron_rm.errors import DataError, UsageError, exit_on_usage_error
from megatron_rm.runtime import parallel
from megatron_rm.runtime.parallel import broadcast_sequences

ON_INVALID = ("error", "skip")
CHUNK, END, STOP, FAILED = "chunk", "end", "stop", "failed"


@dataclass
class JobRow:
    """One input row: its fields, and either the token sequences to compute on or its problem."""

    location: str
    fields: dict = field(default_factory=dict)
    """The row as read (empty when it is not a JSON object)."""
    sequences: list[list[int]] = field(default_factory=list)
    problem: RowProblem | None = None


class RowTask(ABC):
    verb = "done"
    """What the closing line says was done to the rows ("scored", "generated")."""

    @abstractmethod
    def prepare(self, raws: list[RawRow]) -> list[JobRow]:
        """Rank 0: validate and encode a chunk of rows (in order)."""

    @abstractmethod
    def run(self, sequences: list[list[int]], rows: list[int]) -> Any:
        """Every rank, collectively: the results of the chunk's sequences, indexable in their
        order. `rows[i]` is sequence i's row number in the whole input."""

    @abstractmethod
    def fields(self, row: JobRow, results) -> dict:
        """Rank 0: the fields `row` gains from its sequences' `results`."""

    def slots(self, sequences: list[list[int]]) -> float | None:
        """Token positions the computation processes for these sequences, padding included
        (None: not measured, and no padding efficiency is reported)."""
        return None


@dataclass
class Summary:
    """What one run did (rows skipped on resume are not counted in the rates)."""

    verb: str = "done"
    skipped: int = 0
    """Rows a previous run had written."""
    complete: bool = False
    """Every row was already written: nothing was computed."""
    done: int = 0
    problems: ProblemLog = field(default_factory=ProblemLog)
    tokens: int = 0
    """Tokens of the sequences computed on (for generation: the prompts)."""
    slots: float = 0.0
    """Token positions processed, padding included (0: not measured)."""
    seconds: float = 0.0

    def line(self) -> str:
        invalid = f"{self.problems.total} invalid"
        if self.problems.total:
            invalid += f" (by reason: {self.problems.by_reason()})"
        seconds = max(self.seconds, 1e-9)
        line = (f"{self.verb} {self.done} rows, {invalid}; {self.tokens} tokens in {self.seconds:.1f} s: "
                f"{self.done / seconds:.1f} rows/s, {self.tokens / seconds:.0f} tokens/s")
        return line + (f", padding efficiency {self.tokens / self.slots:.3f}" if self.slots else "")


def add_file_arguments(parser, verb: str, input_help: str, output_help: str, chunk_rows: int = 1024) -> None:
    """A file job's command line: --input, --output, --on-invalid and --chunk-rows (`verb`: what is
    done to the rows, for the help)."""
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help=f"{output_help} (.jsonl or .parquet)")
    parser.add_argument("--on-invalid", choices=ON_INVALID, default="error",
                        help="invalid rows: stop at the first chunk holding one, or write them with an 'error' "
                             "field (counted)")
    parser.add_argument("--chunk-rows", type=_positive, default=chunk_rows,
                        help=f"rows read, {verb} and written per step (what a rerun may redo)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def check_files(input_path, output_path) -> None:
    """Refuse an unreadable input or an unusable output before a (slow) model load; every rank
    checks, the file system being shared as it is for the model."""
    RowOutput(output_path)
    iter_raw_rows(input_path)


def run_tool(run: Callable[[], Any], output, verb: str) -> Any:
    """A file tool's body on every rank: `run()`, a usage error ending every rank with status 2,
    the process group shut down however it ends. Returns `run()`'s result (a Summary, or a tuple
    that starts with one), or None where nothing is left to report: a rank without a summary,
    or a rerun that found `output` complete (said so)."""
    try:
        result = exit_on_usage_error(run, rank=int(os.environ.get("RANK", "0")))
    finally:
        parallel.shutdown()
    summary = result[0] if isinstance(result, tuple) else result
    if summary is None:
        return None
    if summary.complete:
        print(f"{output} is already complete ({summary.skipped} rows): nothing to {verb}")
        return None
    return result


def run_file(task: RowTask, input_path: str | Path, output_path: str | Path, *, on_invalid: str = "error",
             chunk_rows: int = 1024, progress: bool = True) -> Summary | None:
    """Compute every row of `input_path` into `output_path`; the summary on rank 0, None elsewhere.

    Collective: every rank of the job calls it. Invalid rows stop the job (`on_invalid="error"`)
    or are written with an `error` field (`"skip"`).
    """
    if on_invalid not in ON_INVALID or chunk_rows < 1:
        raise UsageError(f"on_invalid={on_invalid!r} must be one of {', '.join(ON_INVALID)}, "
                         f"chunk_rows={chunk_rows} must be >= 1")
    reader = _Reader(task, input_path, output_path, on_invalid, chunk_rows, progress) \
        if dist.get_rank() == 0 else None
    while True:
        order = [reader.next_order() if reader else None]
        dist.broadcast_object_list(order, src=0)
        kind, message, rows = order[0]
        if kind == END:
            return reader.summary if reader else None
        if kind != CHUNK:
            if reader:
                reader.close()
                raise reader.failure
            raise (DataError if kind == STOP else RuntimeError)(message)
        results = task.run(broadcast_sequences(reader.sequences() if reader else None), rows)
        if reader:
            reader.pending = results


class _Reader:
    """Rank 0's side: the input, the output, and the chunk being computed."""

    def __init__(self, task: RowTask, input_path, output_path, on_invalid: str, chunk_rows: int, progress: bool):
        self.started = time.perf_counter()
        self.task, self.input_path, self.output_path = task, input_path, output_path
        self.on_invalid, self.chunk_rows, self.progress = on_invalid, chunk_rows, progress
        self.rows, self.output, self.bar, self.chunk, self.pending = None, None, None, [], None
        self.summary = Summary(verb=task.verb)
        self.failure: BaseException | None = None

    def next_order(self) -> tuple[str, str | None, list[int] | None]:
        """Write the chunk just computed, then read the next: what every rank does next."""
        try:
            if self.rows is None:
                self._open()
            else:
                self._write()
            first = self.summary.skipped + self.summary.done + self.summary.problems.total
            if self._read():
                numbers = [first + index for index, row in enumerate(self.chunk) for _ in row.sequences]
                return CHUNK, None, numbers
            self.output.finish()
            self.close()
            return END, None, None
        except Exception as error:  # every rank must hear of it, whatever it is
            self.failure = error
            if isinstance(error, UsageError):
                return STOP, str(error), None
            return FAILED, f"rank 0 failed ({type(error).__name__}: {error}); see its traceback", None

    def sequences(self) -> list[list[int]]:
        return [ids for row in self.chunk for ids in row.sequences]

    def close(self) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        if self.bar is not None:
            self.bar.close()

    def _open(self) -> None:
        self.output = RowOutput(self.output_path)
        self.rows = iter_raw_rows(self.input_path)
        done = self.output.resume()
        skipped = sum(1 for _ in itertools.islice(self.rows, done))
        if skipped < done:
            raise DataError(f"{self.output.path} holds {done} rows but {self.input_path} has only {skipped}: "
                            "is it the output of another input? Remove it or choose another --output")
        self.summary.skipped = done
        if done:
            print(f"resuming: {done} rows already in {self.output.path} are skipped", file=sys.stderr, flush=True)
        self.bar = tqdm(total=count_rows(self.input_path), initial=done, unit="row", file=sys.stderr,
                        dynamic_ncols=True, disable=not self.progress)

    def _read(self) -> bool:
        """Prepare the next chunk; False at the end of the input."""
        raws = list(itertools.islice(self.rows, self.chunk_rows))
        if not raws:
            handled = self.summary.done + self.summary.problems.total
            if not handled and not self.summary.skipped:
                raise DataError(f"{self.input_path}: no rows to compute")
            self.summary.complete = not handled
            return False
        if self.output.finished:
            raise DataError(f"{self.output.path} is a finished Parquet file with {self.summary.skipped} rows, "
                            f"but {self.input_path} has more; remove it to compute again")
        self.chunk = self.task.prepare(raws)
        invalid = [row.problem for row in self.chunk if row.problem is not None]
        if invalid and self.on_invalid == "error":
            problems = ProblemLog()
            for problem in invalid:
                problems.add(problem)
            written = self.summary.skipped + self.summary.done + self.summary.problems.total
            where = f"rows {written + 1}-{written + len(raws)}"
            if written:
                where += f"; rows 1-{written} are in {self.output.path} and a rerun resumes after them"
            raise DataError(problems.error_message(f"{self.input_path} ({where})",
                                                   "pass --on-invalid skip to write them with an 'error' field "
                                                   "instead"))
        for problem in invalid:
            self.summary.problems.add(problem)
        sequences = self.sequences()
        self.summary.tokens += sum(map(len, sequences))
        slots = self.task.slots(sequences) if sequences else None
        self.summary.slots += slots or 0.0
        return True

    def _write(self) -> None:
        out, start = [], 0
        for row in self.chunk:
            if row.problem is not None:
                out.append({**row.fields, "error": str(row.problem)})
                continue
            end = start + len(row.sequences)
            out.append({**row.fields, **self.task.fields(row, self.pending[start:end])})
            start = end
            self.summary.done += 1
        self.output.write(out)
        self.bar.update(len(out))


def count_rows(path: str | Path) -> int | None:
    """The input's row count when it is cheap (JSON Lines lines, Parquet metadata); None otherwise."""
    path = Path(path)
    if (path / "state.json").exists():  # a saved dataset: counting means importing `datasets`
        return None
    files = [file for file in sorted(path.iterdir()) if file.suffix.lower() in FILE_FORMATS] \
        if path.is_dir() else [path]
    total = 0
    for file in files:
        if file.suffix.lower() == ".parquet":
            total += pq.ParquetFile(file).metadata.num_rows
        elif file.suffix.lower() == ".jsonl":
            with file.open("rb") as lines:
                total += sum(1 for line in lines if line.strip())
        else:
            return None
    return total
