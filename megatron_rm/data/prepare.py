"""Read -> validate -> tokenize -> store: turning data files into a token store.

Used by `tools/preprocess_data.py` for large data sets (several worker
processes) and by training for raw files (a store under `run.dir/data/`).
Rows stream through in chunks, so memory stays flat whatever the file size;
with several workers the output order is still the input order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from megatron_rm.config import DataConfig
from megatron_rm.data.ending import APPEND_EOS, Ending
from megatron_rm.data.records import Comparison
from megatron_rm.data.rows import ProblemLog, RowKeys, RowProblem, parse_demonstration, parse_row
from megatron_rm.data.sources import RawRow, iter_raw_rows
from megatron_rm.data.step_tokens import StepEncoder
from megatron_rm.data.steps import LabelledSteps, Labelling, parse_outcome, parse_steps
from megatron_rm.data.store import GroupStore, StoreWriter, is_store, read_meta
from megatron_rm.data.tokenize import GroupEncoder, fingerprint, load_tokenizer
from megatron_rm.errors import DataError

CHUNK_ROWS = 512
GROUPINGS = {"comparisons": parse_row, "demonstrations": parse_demonstration, "outcomes": parse_outcome,
             "steps": parse_steps}
"""How rows become groups: every ranked response (reward training), the one response a policy
imitates (supervised fine-tuning), or one response with per-token targets: its outcome
(outcome reward models) or its steps' labels (process reward models)."""
LABELLED = ("outcomes", "steps")
"""The groupings whose documents carry per-token targets, made with a `Labelling`."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides a store's contents besides the data files."""

    tokenizer: str
    """Tokenizer folder."""
    max_length: int
    truncation: str
    keys: RowKeys = field(default_factory=RowKeys)
    on_invalid: str = "error"
    """error: refuse the data when any row is invalid; skip: leave such rows out and count them."""
    grouping: str = "comparisons"
    """One of GROUPINGS: comparisons (groups of ranked responses), demonstrations (one
    response per group), outcomes or steps (one response with per-token targets)."""
    labelling: Labelling = field(default_factory=Labelling)
    """How the labelled groupings (LABELLED) place and map their labels."""
    ending: Ending = field(default_factory=Ending)
    """How the model's documents end (`data.ending`)."""

    @classmethod
    def from_config(cls, d: DataConfig, tokenizer: str, grouping: str = "comparisons",
                    labelling: Labelling | None = None, ending: Ending = APPEND_EOS) -> Settings:
        """From a run's data settings, its tokenizer folder, how its rows become groups, (for
        labelled steps) how their labels are placed, and how the model's documents end."""
        keys = RowKeys(prompt=d.prompt_key, chosen=d.chosen_key, rejected=d.rejected_key,
                       response=d.response_key, responses=d.responses_key, ranking=d.ranking_key,
                       margin=d.margin_key, labels=d.labels_key, completions=d.completions_key,
                       label=d.label_key, input=d.input_key)
        return cls(tokenizer=tokenizer, max_length=d.max_length, truncation=d.truncation,
                   keys=keys, on_invalid=d.on_invalid, grouping=grouping, labelling=labelling or Labelling(),
                   ending=ending)

    def recorded(self, tokenizer_fingerprint: str) -> dict:
        """The part of meta.json a store must share with a run to be used by it."""
        recorded = {"tokenizer": tokenizer_fingerprint, "max_length": self.max_length,
                    "truncation": self.truncation, "keys": dataclasses.asdict(self.keys), "grouping": self.grouping}
        if self.grouping in LABELLED:
            recorded["labelling"] = dataclasses.asdict(self.labelling)
        if self.ending != Ending():  # stores built before models could end otherwise stay usable
            recorded["ending"] = dataclasses.asdict(self.ending)
        return recorded


def prompt_key(row: Comparison | LabelledSteps) -> int:
    """A stable 64-bit hash of the prompt: equal prompts, equal keys, in any process."""
    prompt = row.prompt
    if not prompt and isinstance(row, LabelledSteps):  # Math-Shepherd: the question opens the first step
        prompt = row.steps[0]
    text = prompt if isinstance(prompt, str) else json.dumps(
        list(prompt), sort_keys=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


# --- worker side: one chunk of raw rows -> encoded groups, problems or drop reasons ---------------

_worker: dict = {}


def _start_worker(settings: Settings) -> None:
    if settings.grouping not in GROUPINGS:
        raise DataError(f"grouping={settings.grouping!r} must be one of {', '.join(GROUPINGS)}")
    tokenizer = load_tokenizer(settings.tokenizer)
    parse = GROUPINGS[settings.grouping]
    if settings.grouping in LABELLED:
        _worker["encoder"] = StepEncoder(tokenizer, settings.max_length, settings.truncation, settings.labelling,
                                        settings.ending)
        _worker["parse"] = lambda raw: parse(raw, settings.keys, settings.labelling)
    else:
        _worker["encoder"] = GroupEncoder(tokenizer, settings.max_length, settings.truncation, settings.ending)
        _worker["parse"] = lambda raw: parse(raw, settings.keys)


def _encode_chunk(rows: list[RawRow]) -> list:
    parsed = [_worker["parse"](raw) for raw in rows]
    valid = [p for p in parsed if not isinstance(p, RowProblem)]
    encoded = iter(_worker["encoder"].encode_groups(valid))
    out = []
    for row in parsed:
        result = row if isinstance(row, RowProblem) else next(encoded)
        if isinstance(result, RowProblem):  # a problem found while parsing, or while placing labels
            out.append(result)
            continue
        documents, prompt_lengths, reason, *targets = result
        if documents is None:
            out.append(reason)
        else:
            # uint32 arrays pickle in a fraction of the bytes of int lists.
            ids = [np.asarray(d, dtype=np.uint32) for d in documents]
            # Labelled steps carry their labels as `targets`; margins and attributes are a comparison's.
            margin, attributes = (row.margin, row.labels) if isinstance(row, Comparison) else (None, None)
            out.append((ids, margin, attributes, prompt_key(row), prompt_lengths, *targets))
    return out


def _chunks(rows: Iterator[RawRow]) -> Iterator[list[RawRow]]:
    while chunk := list(islice(rows, CHUNK_ROWS)):
        yield chunk


def _encoded_chunks(rows: Iterator[RawRow], settings: Settings, workers: int) -> Iterator[list]:
    if workers <= 1:
        _start_worker(settings)
        yield from map(_encode_chunk, _chunks(rows))
        return
    # fork starts workers in milliseconds where spawn re-imports torch in each; a bounded
    # window of chunks is in flight, where Pool.imap would read the whole input ahead.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Each worker encodes on one thread: the processes are the parallelism, and a fast
    # tokenizer's own thread pool in every one of them would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with multiprocessing.get_context(method).Pool(workers, _start_worker, (settings,)) as pool:
        chunks = _chunks(rows)
        while window := list(islice(chunks, 4 * workers)):
            yield from pool.map(_encode_chunk, window)


# --- main side ------------------------------------------------------------------------------------

def build_store(paths: Iterable[str | Path], out: str | Path, settings: Settings, *, workers: int = 1,
                progress_every: int = 100_000) -> dict:
    """Tokenize every row of `paths` into a store at `out`; returns its meta.json.

    Invalid rows stop the build (data.on_invalid=error, the default) after the
    whole input is read, so the message counts them all; with `skip` they are
    left out and counted by reason. Groups that do not fit the length policy are
    dropped and counted by reason. Either way nothing leaves without a count.
    A progress line is printed every `progress_every` rows (0: never).
    """
    paths = [str(p) for p in paths]
    tokenizer = load_tokenizer(settings.tokenizer)
    writer = StoreWriter(out, len(tokenizer))
    problems, dropped, rows = ProblemLog(), Counter(), 0
    start, next_report = time.perf_counter(), progress_every
    try:
        for chunk in _encoded_chunks(_all_rows(paths), settings, workers):
            if progress_every and rows >= next_report:
                tokens = writer.document_starts[-1]
                print(f"{out}: {rows:,} rows, {tokens:,} tokens, "
                      f"{tokens / (time.perf_counter() - start):,.0f} tokens/s", flush=True)
                next_report += progress_every
            for result in chunk:
                rows += 1
                if isinstance(result, RowProblem):
                    problems.add(result)
                elif isinstance(result, str):
                    dropped[result] += 1
                else:
                    writer.add(*result)
        if problems.total and settings.on_invalid == "error":
            raise DataError(problems.error_message(", ".join(paths)))
        kept = rows - problems.total - sum(dropped.values())
        if rows == 0:
            raise DataError(f"{', '.join(paths)}: no rows (the data is empty)")
        if kept == 0:
            raise DataError(f"{', '.join(paths)}: no usable rows ({rows} read, "
                            f"{problems.total} invalid, dropped: {dict(dropped) or 'none'})")
    except BaseException:
        writer.abort()
        raise
    meta = {"sources": _source_stamps(paths), "rows": rows,
            "invalid": dict(problems.counts), "dropped": dict(dropped),
            **settings.recorded(fingerprint(tokenizer))}
    writer.finish(meta)
    return read_meta(out)


def _all_rows(paths: list[str]) -> Iterator[RawRow]:
    for path in paths:
        yield from iter_raw_rows(path)


def _source_stamps(paths: list[str]) -> list[dict]:
    """Enough to tell that a data file changed since its store was built."""
    stamps = []
    for path in paths:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            stat = file.stat()
            stamps.append({"path": str(file.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return stamps


def _incompatibilities(meta: dict, settings: Settings, tokenizer_fingerprint: str) -> list[str]:
    """Why the store described by `meta` cannot serve a run with `settings`; empty when it can."""
    wanted = settings.recorded(tokenizer_fingerprint)
    # A store records the row keys of its version: one made before a row shape existed holds no
    # rows of it, so only the keys it recorded must agree.
    wanted["keys"] = {key: name for key, name in wanted["keys"].items() if key in meta.get("keys", {})}
    # Stores made before supervised examples existed hold comparisons.
    recorded = {"grouping": "comparisons", **meta}
    reasons = [f"{name}: store {recorded.get(name)!r}, this run {value!r}"
               for name, value in wanted.items() if recorded.get(name) != value]
    if reasons:
        reasons.append("re-run tools/preprocess_data.py with this run's tokenizer and data settings")
    skipped = sum(meta.get("invalid", {}).values())
    if skipped and settings.on_invalid == "error":
        reasons.append(f"the store left out {skipped} invalid row(s) ({meta['invalid']}); "
                       "set data.on_invalid=skip to train on it anyway")
    return reasons


def check_compatible(folder: str | Path, settings: Settings, tokenizer_fingerprint: str) -> None:
    """Refuse a store made with another tokenizer or length policy than this run's,
    or one that skipped rows when this run wants every row valid."""
    reasons = _incompatibilities(read_meta(folder), settings, tokenizer_fingerprint)
    if reasons:
        raise DataError(f"{folder}: this token store cannot serve this run:\n  " + "\n  ".join(reasons))


def open_split(path: str | Path, cache: str | Path, settings: Settings, tokenizer_fingerprint: str,
               *, workers: int = 1) -> tuple[GroupStore, dict]:
    """A store for `path`: `path` itself if it is one (checked against `settings`),
    else one built at `cache` (by `workers` processes), reused while the data files
    and settings are unchanged."""
    if is_store(path):
        check_compatible(path, settings, tokenizer_fingerprint)
        return GroupStore(path), read_meta(path)
    if not Path(path).exists():
        raise DataError(f"{path}: no such data file or folder")
    meta = read_meta(cache)
    if (meta is None or meta.get("sources") != _source_stamps([str(path)])
            or _incompatibilities(meta, settings, tokenizer_fingerprint)):
        meta = build_store([path], cache, settings, workers=workers)
    return GroupStore(cache), meta
