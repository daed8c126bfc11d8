"""Which documents each rank's micro-batches hold, for the pair-integrity test.

    torchrun --standalone --nproc-per-node 4 tests/distributed/batching_worker.py \
        --data FILE --out DIR --batching bucket|pack [--tp N] [--then BATCHING TP OUT ...]

Runs the real data path of a training job on CPU/gloo: `parallel.initialize`,
`load_splits` (rank 0 tokenizes into DIR/run/data, the others wait and open
what it built), `sampler_for`, then `train_micro_batches` for steps 0..STEPS-1
and, on a prompt-held-out split of the same file, `eval_micro_batches`. No model
is built. `collect` is also called in-process by the test for a one-rank
reference. Each `--then` repeats it in the same job with new process groups
(one start-up instead of two). Every rank writes DIR/rank<R>.json: its layout and, per micro-batch,
the raw `input_ids` / `attention_mask` / `comparisons` and the documents
decoded from them (each document's token ids, rows in order, documents numbered
per row).
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

from megatron.core import parallel_state

from megatron_rm.config import DataConfig, ParallelConfig, RMConfig, RunConfig, TrainConfig
from megatron_rm.data import Batch, load_tokenizer, pad_id
from megatron_rm.runtime import parallel
from megatron_rm.runtime.parallel import Layout
from megatron_rm.training.checks import validate
from megatron_rm.training.data_setup import (
    MicroBatching,
    eval_micro_batches,
    load_splits,
    sampler_for,
    train_micro_batches,
)
from tests.conftest import tiny_model_config

STEPS = 6
GLOBAL_BATCH = 16
MICRO_BATCH = 2
MAX_LENGTH = 64
SEED = 1234
EVAL_FRACTION = 0.4  # holds out 18 of the test's 52 prompts, 5 of them 3-way rankings


def documents_of(batch: Batch) -> list[list[int]]:
    """Each document's ids: rows in order, then the row's documents 1, 2, ... as the mask numbers them."""
    documents = []
    for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist()):
        for number in range(1, max(mask, default=0) + 1):
            documents.append([token for token, m in zip(ids, mask) if m == number])
    return documents


def record(batch: Batch) -> dict:
    return {
        "input_ids": batch.input_ids.tolist(),
        "attention_mask": batch.attention_mask.tolist(),
        "comparisons": batch.comparisons.tolist(),
        "documents": documents_of(batch),
    }


def config(data: Path, out: Path, batching: str, tp: int = 1) -> RMConfig:
    return RMConfig(
        model=tiny_model_config(),
        parallel=ParallelConfig(tp=tp),
        train=TrainConfig(max_steps=STEPS, global_batch_size=GLOBAL_BATCH, micro_batch_size=MICRO_BATCH,
                          seed=SEED),
        data=DataConfig(train_path=str(data), eval_path=None, max_length=MAX_LENGTH, batching=batching),
        run=RunConfig(dir=str(out / "run")),
    )


def collect(cfg: RMConfig, layout: Layout) -> dict:
    """This rank's micro-batches of every step, and its evaluation micro-batches. Collective."""
    pad = pad_id(load_tokenizer(cfg.model.tokenizer))
    run_dir = Path(cfg.run.dir)
    train_split, eval_split, _ = load_splits(cfg.data, cfg.model.tokenizer, run_dir)
    assert eval_split is None
    sampler = sampler_for(train_split, cfg.data, cfg.train)
    steps = []
    for step in range(STEPS):
        batches = train_micro_batches(train_split, sampler, step, layout, MicroBatching.of(cfg.data, MICRO_BATCH, pad))
        steps.append([record(b) for b in batches])

    # The same file split by prompt; reuses the store rank 0 built above.
    held_out = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_fraction=EVAL_FRACTION))
    _, eval_split, report = load_splits(held_out.data, cfg.model.tokenizer, run_dir)
    eval_batching = MicroBatching.of(held_out.data, MICRO_BATCH, pad)
    evals = [record(b) for chunk in eval_micro_batches(eval_split, layout, eval_batching) for b in chunk]
    return {
        "layout": layout.place(),
        "num_groups": len(train_split.store),
        "steps_per_epoch": sampler.steps_per_epoch,
        "steps": steps,
        "eval": evals,
        "eval_groups": report["split"]["eval_groups"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batching", choices=("bucket", "pack"), required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--then", nargs=3, action="append", default=[], metavar=("BATCHING", "TP", "OUT"),
                        help="another run in the same job (its own process groups), saving time on start-up")
    args = parser.parse_args()

    world = int(os.environ["WORLD_SIZE"])
    vocab_size = len(load_tokenizer(tiny_model_config().tokenizer))
    for batching, tp, out in [(args.batching, args.tp, args.out), *args.then]:
        cfg = config(args.data, Path(out), batching, int(tp))
        validate(cfg, world, cuda=False, te_available=False, vocab_size=vocab_size)
        layout = parallel.initialize(cfg.parallel, cfg.train.seed)
        result = collect(cfg, layout)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{layout.rank}.json").write_text(json.dumps(result))
        # The next run lays out its own TP/DP groups in the same torch.distributed job.
        parallel_state.destroy_model_parallel()
    parallel.shutdown()


if __name__ == "__main__":
    main()
