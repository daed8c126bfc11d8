"""Writing a job's output rows so that an interrupted job can go on where it stopped.

Rows are appended as JSON Lines, one chunk at a time, so what is on disk is always the
first N rows of the output plus at most one torn line; a rerun cuts that line and skips
the N rows it finds. Parquet cannot be appended to, so a Parquet output is written as the
JSON Lines sidecar `<output>.partial.jsonl` while the job runs and converted at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_rm.errors import DataError, UsageError

OUTPUT_FORMATS = (".jsonl", ".parquet")
BLOCK = 1 << 20


class RowOutput:
    """The output file of one job. `resume()` first, then `write` chunks, then `finish()`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() not in OUTPUT_FORMATS:
            raise UsageError(f"--output {self.path}: expected a .jsonl or .parquet file")
        self.parquet = self.path.suffix.lower() == ".parquet"
        self.lines = Path(f"{self.path}.partial.jsonl") if self.parquet else self.path
        """Where rows are appended: the output itself, or a Parquet output's sidecar."""
        self.finished = False
        """A Parquet output already written in full: nothing can be added to it."""

    def resume(self) -> int:
        """How many rows a previous run wrote (0 for a new output); a torn last line is cut."""
        if self.parquet and self.path.exists() and not self.lines.exists():
            self.finished = True
            return pq.ParquetFile(self.path).metadata.num_rows
        if not self.lines.exists():
            self.lines.parent.mkdir(parents=True, exist_ok=True)
            return 0
        return _cut_to_complete_lines(self.lines)

    def write(self, rows: list[dict]) -> None:
        """Append rows; values JSON cannot hold (dates, bytes from Parquet) are written as text."""
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        with self.lines.open("ab") as file:
            file.write(text.encode("utf-8"))

    def finish(self) -> None:
        """Turn a Parquet output's sidecar into the Parquet file (atomically), then delete it."""
        if not self.parquet or self.finished:
            return
        with self.lines.open(encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines]
        # Every key of every row: an error row and a done row have different fields.
        keys = list(dict.fromkeys(key for row in rows for key in row))
        try:
            table = pa.table({key: [row.get(key) for row in rows] for key in keys})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise DataError(f"{self.path}: the output rows do not fit one Parquet schema ({error}); "
                            f"they are kept in {self.lines}, or write a .jsonl output") from None
        staging = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(table, staging)
        os.replace(staging, self.path)
        self.lines.unlink()
        self.finished = True


def _cut_to_complete_lines(path: Path) -> int:
    """The number of newline-ended lines in `path`, after cutting whatever follows the last one."""
    count, end, offset = 0, 0, 0
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            count += block.count(b"\n")
            last = block.rfind(b"\n")
            if last >= 0:
                end = offset + last + 1
            offset += len(block)
    if end < offset:
        os.truncate(path, end)
    return count
