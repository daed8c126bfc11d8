"""Reading preference pairs from JSON Lines, with errors that point at the row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_rm.errors import DataError

FIELDS = ("prompt", "chosen", "rejected")
SHOWN_ERRORS = 5


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """All pairs of a JSONL file with string fields `prompt`, `chosen`, `rejected`.

    Every row is checked before any is used; on a bad row the error names the
    file, the line and the field, shows the first few offenders and counts them all.
    Blank lines carry no row and are passed over.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    pairs, problems = [], []
    with path.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            row, problem = _parse_row(raw)
            if problem:
                problems.append(f"{path}:{line_number}: {problem}")
            else:
                pairs.append(PreferencePair(*(row[name] for name in FIELDS)))
    if problems:
        shown = "\n  ".join(problems[:SHOWN_ERRORS])
        more = f"\n  ... and {len(problems) - SHOWN_ERRORS} more" if len(problems) > SHOWN_ERRORS else ""
        raise DataError(f"{path}: {len(problems)} invalid row(s):\n  {shown}{more}")
    if not pairs:
        raise DataError(f"{path}: no preference pairs (the file is empty)")
    return pairs


def _parse_row(raw: bytes) -> tuple[dict | None, str | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 (byte {error.start + 1} of the line)"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at column {error.colno})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    for name in FIELDS:
        if name not in row:
            return None, f"missing field '{name}'"
        if not isinstance(row[name], str):
            return None, f"field '{name}' must be a string, got {type(row[name]).__name__}"
    return row, None
