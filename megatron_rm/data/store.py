"""Tokenized groups on disk: flat memory-mapped arrays plus an index.

A store is a folder:

    tokens.bin        every document's ids back to back (uint16 when the vocabulary fits, else uint32)
    documents.npy     int64 (documents + 1): where each document starts in tokens.bin
    groups.npy        int64 (groups + 1): where each group's documents start (best first; a
                      pair has 2, a ranking K, a single response 1)
    margins.npy       float32 (groups): NaN where a group has no margin (only pairs have one)
    prompt_keys.npy   uint64 (groups): a hash of the prompt, for splitting by prompt
    prompt_lengths.npy  int32 (documents): how many leading tokens of each document are its
                      prompt (after truncation), so a next-token loss can leave them out;
                      absent in stores made before it existed
    labels.npy        float32 (documents, num_labels), NaN where missing; only if any row has labels
    token_targets.bin float32 per token (parallel to tokens.bin), NaN where nothing is learnt: an
                      outcome or process reward model's targets; only in stores of labelled steps
    meta.json         counts, the tokenizer fingerprint and the settings that produced the ids

Readers memory-map the arrays, so a process holds only the pages it touches.
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from pathlib import Path

import numpy as np

from megatron_rm.errors import DataError

META = "meta.json"
FORMAT_VERSION = 1


class StoreWriter:
    """Appends encoded groups; `finish` publishes the folder atomically (rename)."""

    def __init__(self, folder: str | Path, vocab_size: int):
        self.folder = Path(folder)
        self.staging = self.folder.with_name(f".{self.folder.name}.incomplete")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self.dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
        self.tokens = (self.staging / "tokens.bin").open("wb")
        # Typed arrays, 8 bytes an entry where a list of Python ints takes ~36: the index of
        # a million pairs stays a few tens of MB until `finish` writes it.
        self.document_starts = array("q", [0])
        self.group_starts = array("q", [0])
        self.margins = array("f")
        self.prompt_keys = array("Q")
        self.prompt_lengths = array("i")
        self.labels: list[np.ndarray] = []
        self.num_labels = 0
        self.targets = None  # opened by the first group with token targets

    def add(self, documents: list[list[int]], margin: float | None, labels, prompt_key: int,
            prompt_lengths: list[int] | None = None, token_targets: list[np.ndarray] | None = None) -> None:
        """One group; `prompt_lengths`: leading prompt tokens of each document (None: no prompt);
        `token_targets`: a float target per token of each document (a store holds them for every
        group or none)."""
        if (token_targets is not None) != (self.targets is not None) and len(self.margins):
            raise DataError("groups disagree on having token targets")
        if token_targets is not None:
            self.targets = self.targets or (self.staging / "token_targets.bin").open("wb")
            for values in token_targets:
                self.targets.write(np.asarray(values, dtype=np.float32).tobytes())
        self.prompt_lengths.extend(prompt_lengths if prompt_lengths is not None else [0] * len(documents))
        for ids in documents:
            self.tokens.write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
            self.document_starts.append(self.document_starts[-1] + len(ids))
        self.group_starts.append(len(self.document_starts) - 1)
        self.margins.append(np.nan if margin is None else margin)
        self.prompt_keys.append(prompt_key)
        if labels is not None:
            self.num_labels = self.num_labels or len(labels[0])
            if len(labels[0]) != self.num_labels:
                raise DataError(f"rows disagree on the number of labels ({len(labels[0])} vs {self.num_labels})")
        # Kept per group (None for unlabelled) until `finish` knows the width.
        self.labels.append(None if labels is None else np.asarray(labels, dtype=np.float32))

    def finish(self, meta: dict) -> Path:
        self._close()
        np.save(self.staging / "documents.npy", np.frombuffer(self.document_starts, dtype=np.int64))
        np.save(self.staging / "groups.npy", np.frombuffer(self.group_starts, dtype=np.int64))
        np.save(self.staging / "margins.npy", np.frombuffer(self.margins, dtype=np.float32))
        np.save(self.staging / "prompt_keys.npy", np.frombuffer(self.prompt_keys, dtype=np.uint64))
        np.save(self.staging / "prompt_lengths.npy", np.frombuffer(self.prompt_lengths, dtype=np.int32))
        if self.num_labels:
            blocks = [
                block if block is not None else np.full((size, self.num_labels), np.nan, np.float32)
                for block, size in zip(self.labels, np.diff(self.group_starts))
            ]
            np.save(self.staging / "labels.npy", np.concatenate(blocks))
        counts = {"groups": len(self.margins), "documents": len(self.document_starts) - 1,
                  "tokens": self.document_starts[-1]}
        full = {"format": FORMAT_VERSION, "dtype": np.dtype(self.dtype).name,
                "num_labels": self.num_labels, **counts, **meta}
        (self.staging / META).write_text(json.dumps(full, indent=2))
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.staging, self.folder)
        return self.folder

    def _close(self) -> None:
        self.tokens.close()
        if self.targets is not None:
            self.targets.close()

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)


def read_meta(folder: str | Path) -> dict | None:
    path = Path(folder) / META
    return json.loads(path.read_text()) if path.is_file() else None


def is_store(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


class GroupStore:
    """A read-only view of a store's groups (optionally a subset, by index)."""

    def __init__(self, folder: str | Path, index: np.ndarray | None = None):
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        if self.meta is None or self.meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{self.folder}: not a megatron-rm token store (no {META} of format {FORMAT_VERSION})")
        self.tokens = np.memmap(self.folder / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        self.document_starts = np.load(self.folder / "documents.npy", mmap_mode="r")
        self.group_starts = np.load(self.folder / "groups.npy", mmap_mode="r")
        self.margins = np.load(self.folder / "margins.npy", mmap_mode="r")
        self.prompt_keys = np.load(self.folder / "prompt_keys.npy", mmap_mode="r")
        labels, prompts = self.folder / "labels.npy", self.folder / "prompt_lengths.npy"
        self.labels = np.load(labels, mmap_mode="r") if labels.is_file() else None
        self.document_prompt_lengths = np.load(prompts, mmap_mode="r") if prompts.is_file() else None
        targets = self.folder / "token_targets.bin"
        self.targets = np.memmap(targets, dtype=np.float32, mode="r") if targets.is_file() else None
        self.index = np.arange(self.meta["groups"], dtype=np.int64) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, index: np.ndarray) -> GroupStore:
        """The groups at positions `index` of this view."""
        return GroupStore(self.folder, self.index[index])

    def documents(self, group: int) -> list[np.ndarray]:
        """Group `group`'s documents, best first, as int64 id arrays."""
        stored = self.index[group]
        first, last = self.group_starts[stored], self.group_starts[stored + 1]
        return [np.asarray(self.tokens[self.document_starts[d]: self.document_starts[d + 1]], dtype=np.int64)
                for d in range(first, last)]

    def has_token_targets(self) -> bool:
        return self.targets is not None

    def token_targets(self, group: int) -> list[np.ndarray]:
        """Group `group`'s per-token targets, one float32 array per document, NaN where unlabelled."""
        stored = self.index[group]
        first, last = self.group_starts[stored], self.group_starts[stored + 1]
        return [np.asarray(self.targets[self.document_starts[d]: self.document_starts[d + 1]])
                for d in range(first, last)]

    def has_prompt_lengths(self) -> bool:
        return self.document_prompt_lengths is not None

    def prompt_lengths(self, group: int) -> list[int]:
        """Leading prompt tokens of each of group `group`'s documents, best first."""
        stored = self.index[group]
        return [int(n) for n in self.document_prompt_lengths[self.group_starts[stored]: self.group_starts[stored + 1]]]

    def margin(self, group: int) -> float | None:
        value = float(self.margins[self.index[group]])
        return None if np.isnan(value) else value

    def group_labels(self, group: int) -> np.ndarray | None:
        if self.labels is None:
            return None
        stored = self.index[group]
        return np.asarray(self.labels[self.group_starts[stored]: self.group_starts[stored + 1]])

    def group_sizes(self) -> np.ndarray:
        """Documents of each group in this view (2 for a pair, K for a ranking, 1 for a single response)."""
        return np.diff(self.group_starts)[self.index]

    def has_margins(self) -> bool:
        return bool(np.isfinite(self.margins[self.index]).any())

    def label_width(self) -> int:
        """Attributes per document (0 without labels)."""
        return 0 if self.labels is None else int(self.labels.shape[1])

    def document_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(longest document, total tokens) of each group in this view, for batching."""
        lengths = np.diff(self.document_starts)
        starts = np.asarray(self.group_starts[:-1])
        longest = np.maximum.reduceat(lengths, starts)[self.index]
        total = np.add.reduceat(lengths, starts)[self.index]
        return longest, total
