"""The run's data: token stores for train and eval, and each step's micro-batches.

Raw data files are tokenized once, by global rank 0, into `run.dir/data/<split>/`
(reused while the files and settings are unchanged); every rank then
memory-maps the same store. `run.dir` must therefore be shared by all nodes, as
it already is for checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from megatron_rm.config import DataConfig, LoopConfig
from megatron_rm.data import Batch
from megatron_rm.data.batching import collate, eval_share, pack_groups, split_evenly
from megatron_rm.data.ending import APPEND_EOS, Ending
from megatron_rm.data.prepare import Settings, open_split
from megatron_rm.data.sampler import GroupSampler
from megatron_rm.data.split import split_by_prompt
from megatron_rm.data.steps import Labelling
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import fingerprint, load_tokenizer
from megatron_rm.errors import DataError, UsageError
from megatron_rm.runtime.parallel import Layout

EVAL_CHUNK_GROUPS = 1024
"""Evaluation groups per rank whose micro-batches exist at once."""


@dataclass
class Split:
    store: GroupStore
    longest: np.ndarray
    """Longest document of each group, for bucketing."""
    total: np.ndarray
    """Tokens of each group, for packing."""

    @classmethod
    def of(cls, store: GroupStore) -> Split:
        return cls(store, *store.document_lengths())


def labelling_for(cfg) -> Labelling:
    """How a run's labelled steps are placed and mapped (`loss.*`, `data.step_*`)."""
    return Labelling(cfg.loss.num_classes, cfg.loss.neutral, cfg.data.step_separator, cfg.data.step_tag)


def load_splits(data: DataConfig, tokenizer: str, run_dir: Path, grouping: str = "comparisons",
                labelling: Labelling | None = None, ending: Ending = APPEND_EOS) -> tuple[Split, Split | None, dict]:
    """(train, eval or None, report), rows made into groups by `grouping` (see `prepare.GROUPINGS`;
    labelled steps placed by `labelling`). Collective: call on every rank after process groups exist."""
    opened, problem = None, None
    if dist.get_rank() == 0:
        try:
            opened = _open_all(data, tokenizer, run_dir, grouping, labelling, ending)
        except UsageError as error:
            problem = str(error)
    # Rank 0 builds; the others wait for it, then fail alike or open what it built.
    shared = [problem]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        raise DataError(shared[0])
    return opened or _open_all(data, tokenizer, run_dir, grouping, labelling, ending)


def _open_all(d: DataConfig, tokenizer: str, run_dir: Path, grouping: str,
              labelling: Labelling | None, ending: Ending) -> tuple[Split, Split | None, dict]:
    settings = Settings.from_config(d, tokenizer, grouping, labelling, ending)
    tokenizer_fingerprint = fingerprint(load_tokenizer(tokenizer))

    def open_one(path, split: str):
        return open_split(path, run_dir / "data" / split, settings, tokenizer_fingerprint,
                          workers=d.preprocess_workers)

    train_store, train_meta = open_one(d.train_path, "train")
    report = {"train": _summary(d.train_path, train_meta)}
    eval_store = None
    if d.eval_path:
        eval_store, eval_meta = open_one(d.eval_path, "eval")
        report["eval"] = _summary(d.eval_path, eval_meta)
    elif d.eval_fraction > 0:
        # A fixed split seed: runs with different train.seed values share one eval set.
        train_index, eval_index = split_by_prompt(train_store.prompt_keys[train_store.index],
                                                  d.eval_fraction, seed=0)
        if len(eval_index) == 0 or len(train_index) == 0:
            raise DataError(f"data.eval_fraction={d.eval_fraction} leaves {len(train_index)} train and "
                            f"{len(eval_index)} eval groups of {d.train_path}")
        train_store, eval_store = train_store.subset(train_index), train_store.subset(eval_index)
        report["split"] = {"eval_fraction": d.eval_fraction, "by": "prompt",
                           "train_groups": len(train_index), "eval_groups": len(eval_index)}
    return Split.of(train_store), (Split.of(eval_store) if eval_store else None), report


def _summary(path, meta: dict) -> dict:
    return {"path": str(path), "rows": meta["rows"], "invalid": meta["invalid"], "dropped": meta["dropped"],
            "groups": meta["groups"], "documents": meta["documents"], "tokens": meta["tokens"]}


def write_report(report: dict, run_dir: Path) -> None:
    """Print what was read, skipped and dropped, and keep it as run.dir/data_report.json."""
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    for name in ("train", "eval"):
        if name in report:
            r = report[name]
            print(f"{name}: {r['path']}: {r['rows']} rows, invalid {_counts(r['invalid'])}, dropped "
                  f"{_counts(r['dropped'])}; {r['groups']} groups, {r['documents']} documents, "
                  f"{r['tokens']} tokens", flush=True)
    if "split" in report:
        split = report["split"]
        print(f"held out {split['eval_groups']} of {split['eval_groups'] + split['train_groups']} groups "
              f"by prompt (data.eval_fraction={split['eval_fraction']})", flush=True)


def _counts(counts: dict) -> str:
    return f"{sum(counts.values())}" + (f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else "")


@dataclass(frozen=True)
class MicroBatching:
    """How a rank's groups become micro-batches: padded rows of `micro_batch_size` groups, or
    packed rows of at most `pack_length` tokens."""

    packed: bool
    micro_batch_size: int
    pack_length: int
    pad_to_multiple_of: int
    pad_id: int

    @classmethod
    def of(cls, data: DataConfig, micro_batch_size: int, pad_id: int, *, train_micro_batch_size: int | None = None):
        """`data.pack_length` defaults to 2 x the training micro-batch x max_length: the most an
        unpacked training micro-batch can hold."""
        pack_length = data.pack_length or 2 * (train_micro_batch_size or micro_batch_size) * data.max_length
        return cls(data.batching == "pack", micro_batch_size, pack_length, data.pad_to_multiple_of, pad_id)

    def __call__(self, split: Split, groups: np.ndarray) -> list[Batch]:
        if self.packed:
            plan = pack_groups(groups, split.total[groups], self.pack_length)
        else:
            plan = split_evenly(groups, self.micro_batch_size)
        return [collate(split.store, g, self.pad_id, packed=self.packed, pad_to_multiple_of=self.pad_to_multiple_of)
                for g in plan]


def train_micro_batches(split: Split, sampler: GroupSampler, step: int, layout: Layout,
                        batching: MicroBatching) -> list[Batch]:
    """This rank's micro-batches of 0-based `step`."""
    return batching(split, sampler.rank_share(step, layout.dp, layout.dp_rank))


def eval_micro_batches(split: Split, layout: Layout, batching: MicroBatching) -> Iterator[list[Batch]]:
    """This rank's part of the evaluation set, in chunks of micro-batches; all ranks
    together cover it once.

    Chunks bound the memory of a large evaluation set: a chunk's tensors are built
    only when it is reached. Every rank yields the same number of chunks (possibly
    empty), since each chunk ends in a data-parallel reduction.
    """
    share = eval_share(split.longest, layout.dp, layout.dp_rank)
    chunks = max(1, -(-len(split.store) // (layout.dp * EVAL_CHUNK_GROUPS)))
    for groups in np.array_split(share, chunks):
        yield batching(split, groups)


def sampler_for(split: Split, data: DataConfig, loop: LoopConfig) -> GroupSampler:
    window = data.bucket_window if data.batching == "bucket" else 0
    return GroupSampler(split.longest, loop.global_batch_size, loop.seed, window)


class DataPosition:
    """The sampler's place in the training data, as a checkpointed object: the step the run is at."""

    def __init__(self, sampler: GroupSampler):
        self.sampler = sampler
        self.step = 0

    def state_dict(self) -> dict:
        return self.sampler.state_dict(self.step)

    def load_state_dict(self, state: dict) -> None:
        self.step = self.sampler.resume_step(state)
