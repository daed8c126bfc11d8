"""Scoring a whole file, a chunk of rows at a time, on a TP/PP/DP job (`tools/score_rm.py`).

Rank 0 reads, validates, encodes and writes; the other ranks only score. Before each chunk
rank 0 broadcasts what comes next (a chunk, the end, or a stop with its message), so an
error on rank 0 ends every rank the same way instead of leaving them waiting in a
collective. A chunk is validated whole before it is scored, and written whole after, so
the output always ends on a chunk of complete rows and a rerun resumes from there.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch.distributed as dist
from tqdm import tqdm

from megatron_rm.data.rows import ProblemLog
from megatron_rm.data.sources import FILE_FORMATS, iter_raw_rows
from megatron_rm.errors import DataError, UsageError
from megatron_rm.scoring.batching import padding_efficiency, plan
from megatron_rm.scoring.output import ScoreOutput
from megatron_rm.scoring.rows import error_fields, prepare_rows, scored_fields
from megatron_rm.scoring.scorer import Scorer, broadcast_sequences

ON_INVALID = ("error", "skip")
CHUNK, END, STOP, FAILED = "chunk", "end", "stop", "failed"


@dataclass
class Summary:
    """What one run did (rows skipped on resume are not counted in the rates)."""

    skipped: int = 0
    """Rows a previous run had written."""
    complete: bool = False
    """Every row was already written: nothing was scored."""
    scored: int = 0
    problems: ProblemLog = field(default_factory=ProblemLog)
    tokens: int = 0
    slots: float = 0.0
    """Token slots the model processed, padding included (tokens / padding efficiency)."""
    seconds: float = 0.0

    def line(self) -> str:
        invalid = f"{self.problems.total} invalid"
        if self.problems.total:
            invalid += f" (by reason: {self.problems.by_reason()})"
        seconds = max(self.seconds, 1e-9)
        efficiency = self.tokens / self.slots if self.slots else 1.0
        return (f"scored {self.scored} rows, {invalid}; {self.tokens} tokens in {self.seconds:.1f} s: "
                f"{self.scored / seconds:.1f} rows/s, {self.tokens / seconds:.0f} tokens/s, "
                f"padding efficiency {efficiency:.3f}")


def score_file(scorer: Scorer, input_path: str | Path, output_path: str | Path, *, on_invalid: str = "error",
               chunk_rows: int = 1024, progress: bool = True) -> Summary | None:
    """Score every row of `input_path` into `output_path`; the summary on rank 0, None elsewhere.

    Collective: every rank of the job calls it. Invalid rows stop the job (`on_invalid="error"`)
    or are written with an `error` field (`"skip"`).
    """
    if on_invalid not in ON_INVALID or chunk_rows < 1:
        raise UsageError(f"on_invalid={on_invalid!r} must be one of {', '.join(ON_INVALID)}, "
                         f"chunk_rows={chunk_rows} must be >= 1")
    reader = _Reader(scorer, input_path, output_path, on_invalid, chunk_rows, progress) \
        if dist.get_rank() == 0 else None
    while True:
        order = [reader.next_order() if reader else None]
        dist.broadcast_object_list(order, src=0)
        kind, message = order[0]
        if kind == END:
            return reader.summary if reader else None
        if kind != CHUNK:
            if reader:
                reader.close()
                raise reader.failure
            raise (DataError if kind == STOP else RuntimeError)(message)
        rewards = scorer.score(broadcast_sequences(reader.sequences() if reader else None))
        if reader:
            reader.pending = rewards


class _Reader:
    """Rank 0's side: the input, the output, and the chunk being scored."""

    def __init__(self, scorer: Scorer, input_path, output_path, on_invalid: str, chunk_rows: int,
                 progress: bool):
        self.started = time.perf_counter()
        self.scorer, self.input_path, self.output_path = scorer, input_path, output_path
        self.on_invalid, self.chunk_rows, self.progress = on_invalid, chunk_rows, progress
        self.rows, self.output, self.bar, self.chunk, self.pending = None, None, None, [], None
        self.summary = Summary()
        self.failure: BaseException | None = None

    def next_order(self) -> tuple[str, str | None]:
        """Write the chunk just scored, then read the next: what every rank does next."""
        try:
            if self.rows is None:
                self._open()
            else:
                self._write()
            if self._read():
                return CHUNK, None
            self.output.finish()
            self.close()
            return END, None
        except Exception as error:  # every rank must hear of it, whatever it is
            self.failure = error
            if isinstance(error, UsageError):
                return STOP, str(error)
            return FAILED, f"rank 0 failed ({type(error).__name__}: {error}); see its traceback"

    def sequences(self) -> list[list[int]]:
        return [ids for row in self.chunk for ids in row.sequences]

    def close(self) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        if self.bar is not None:
            self.bar.close()

    def _open(self) -> None:
        self.output = ScoreOutput(self.output_path)
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
            handled = self.summary.scored + self.summary.problems.total
            if not handled and not self.summary.skipped:
                raise DataError(f"{self.input_path}: no rows to score")
            self.summary.complete = not handled
            return False
        if self.output.finished:
            raise DataError(f"{self.output.path} is a finished Parquet file with {self.summary.skipped} rows, "
                            f"but {self.input_path} has more; remove it to score again")
        self.chunk = prepare_rows(raws, self.scorer.encoder)
        invalid = [row.problem for row in self.chunk if row.problem is not None]
        if invalid and self.on_invalid == "error":
            problems = ProblemLog()
            for problem in invalid:
                problems.add(problem)
            written = self.summary.skipped + self.summary.scored + self.summary.problems.total
            where = f"rows {written + 1}-{written + len(raws)}"
            if written:
                where += f"; rows 1-{written} are in {self.output.path} and a rerun resumes after them"
            raise DataError(problems.error_message(f"{self.input_path} ({where})",
                                                  "pass --on-invalid skip to write them with an 'error' field instead"))
        for problem in invalid:
            self.summary.problems.add(problem)
        lengths = [len(ids) for ids in self.sequences()]
        if lengths:
            settings = self.scorer.settings
            efficiency = padding_efficiency(plan(lengths, settings.max_tokens, settings.batching), lengths,
                                            settings.batching)
            self.summary.tokens += sum(lengths)
            self.summary.slots += sum(lengths) / efficiency
        return True

    def _write(self) -> None:
        rewards, normalized = self.pending, self.scorer.normalized(self.pending)
        out, start = [], 0
        for row in self.chunk:
            if row.problem is not None:
                out.append(error_fields(row))
                continue
            end = start + len(row.sequences)
            out.append(scored_fields(row, rewards[start:end], None if normalized is None else normalized[start:end]))
            start = end
            self.summary.scored += 1
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
