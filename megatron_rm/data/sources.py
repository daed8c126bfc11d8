"""Streaming the raw rows of a data file or folder, whatever its format, each with where it came from.

Rows are not validated here: JSON Lines rows stay undecoded bytes so that parsing
runs in worker processes (see `rows.parse_row`), and every format is read a
batch at a time so that a file of any size streams in constant memory
(except a `.json` array, which has to be loaded whole).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from megatron_rm.errors import DataError

FILE_FORMATS = (".jsonl", ".json", ".parquet")
SUPPORTED = ("JSON Lines (.jsonl), a JSON array (.json), Parquet (.parquet), "
             "a folder saved by datasets' save_to_disk, or a folder of such files")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class RawRow:
    location: str
    """`path:LINE` (1-based) for JSON Lines; `path:row N` (0-based) for every other format."""
    payload: bytes | object
    """JSON Lines: the line's undecoded bytes; other formats: the row (a dict unless the file is malformed)."""


def iter_raw_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of `path`, in file order (a folder of files: by file name).

    The path and its format are checked now, so a wrong path fails before any
    row is read; the rows themselves are read only as the iterator advances.
    """
    readers = _readers(Path(path))
    return (row for read in readers for row in read())


# Each reader yields one file's (or saved dataset's) rows when called.
Reader = Callable[[], Iterator[RawRow]]


def _readers(path: Path) -> list[Reader]:
    if not path.exists():
        raise DataError(f"{path}: no such data file or folder")
    if path.is_file():
        return [_file_reader(path)]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        example = path / (splits[0] if splits else "train")
        raise DataError(f"{path}: a saved dataset with several splits ({', '.join(splits)}); "
                        f"point at one split's folder, e.g. {example}")
    if (path / "state.json").is_file():
        return [lambda: _saved_dataset_rows(path)]
    files = sorted(child for child in path.iterdir()
                   if child.is_file() and child.suffix.lower() in FILE_FORMATS)
    if not files:
        raise DataError(f"{path}: a folder with no .jsonl, .json or .parquet files, and not a saved dataset")
    return [_file_reader(file) for file in files]


def _file_reader(path: Path) -> Reader:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return lambda: _jsonl_rows(path)
    if suffix == ".json":
        return lambda: _json_array_rows(path)
    if suffix == ".parquet":
        return lambda: _parquet_rows(path)
    raise DataError(f"{path}: unsupported data format '{path.suffix}'; expected {SUPPORTED}")


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                yield RawRow(f"{path}:{line_number}", line)


def _json_array_rows(path: Path) -> Iterator[RawRow]:
    try:
        with path.open(encoding="utf-8") as file:
            rows = json.load(file)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte {error.start + 1} of the file)") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(rows, list):
        found = {dict: "an object", str: "a string", bool: "a boolean", int: "a number",
                 float: "a number", type(None): "null"}[type(rows)]
        raise DataError(f"{path}: expected a JSON array of row objects, found {found} "
                        "(for one object per line, name the file .jsonl)")
    for index, row in enumerate(rows):
        yield RawRow(f"{path}:row {index}", row)


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield RawRow(f"{path}:row {index}", row)
            index += 1


def _saved_dataset_rows(path: Path) -> Iterator[RawRow]:
    import datasets  # slow to import, and only saved datasets need it

    # Arrow batches give plain Python values at a fraction of the per-row formatting cost.
    batches = datasets.load_from_disk(str(path)).with_format("arrow").iter(batch_size=PARQUET_BATCH_ROWS)
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield RawRow(f"{path}:row {index}", row)
            index += 1
