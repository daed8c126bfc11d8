"""Streaming the raw rows of a data file or folder, whatever its format, each with where it came from.

Rows are not validated here: JSON Lines rows stay undecoded bytes so that parsing
runs in worker processes (see `rows.parse_row`), and every format is read a
batch at a time so that a file of any size streams in constant memory
(except a `.json` array, which has to be loaded whole).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

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
    return (row for read, _ in readers for row in read())


def count_hint(path: str | Path) -> int | None:
    """The number of rows when it is known without reading them (Parquet, saved datasets), else None."""
    readers = _readers(Path(path))
    if any(count is None for _, count in readers):
        return None
    return sum(count() for _, count in readers)


# How to read one file or saved dataset, and how to count its rows where that is cheap.
Reader = tuple[Callable[[], Iterator[RawRow]], Optional[Callable[[], int]]]


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
        return [(lambda: _saved_dataset_rows(path), lambda: len(_load_saved_dataset(path)))]
    files = sorted(child for child in path.iterdir()
                   if child.is_file() and child.suffix.lower() in FILE_FORMATS)
    if not files:
        raise DataError(f"{path}: a folder with no .jsonl, .json or .parquet files, and not a saved dataset")
    return [_file_reader(file) for file in files]


def _file_reader(path: Path) -> Reader:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return lambda: _jsonl_rows(path), None
    if suffix == ".json":
        return lambda: _json_array_rows(path), None
    if suffix == ".parquet":
        return lambda: _parquet_rows(path), lambda: pq.ParquetFile(path).metadata.num_rows
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


def _load_saved_dataset(path: Path):
    import datasets  # slow to import, and only saved datasets need it

    return datasets.load_from_disk(str(path))


def _saved_dataset_rows(path: Path) -> Iterator[RawRow]:
    # Arrow batches give plain Python values at a fraction of the per-row formatting cost.
    batches = _load_saved_dataset(path).with_format("arrow").iter(batch_size=PARQUET_BATCH_ROWS)
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield RawRow(f"{path}:row {index}", row)
            index += 1
