"""Layouts of the SFT parity test: train a policy a few steps from one checkpoint.

    torchrun --standalone --nproc-per-node 2 tests/distributed/sft_parity_worker.py --checkpoint DIR \
        --layout 2 1 OUT_TP2 --layout 1 2 OUT_PP2 --layout 1 1 OUT_DP2

Each --layout TP PP OUT runs in turn in the same job, with process groups of its own. With
--create (one rank, TP1) the first initialises the policy and saves the shared checkpoint.
Every rank writes OUT/rank<R>.json: its place in the grid, the per-step loss (mean NLL per
response token), target tokens and gradient norm with padded and with packed micro-batches,
and the evaluation summary of the trained weights.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

from megatron.core import parallel_state

from megatron_rm.config import DataConfig, ParallelConfig, SFTConfig, TrainConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.data import GroupStore, load_tokenizer, pad_id
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.model import build_policy_model
from megatron_rm.objectives import build_objective
from megatron_rm.runtime import parallel
from megatron_rm.training.data_setup import Split
from tests.conftest import DEMO, tiny_model_config
from tests.distributed.layout_steps import train_and_evaluate

TRAIN_ROWS = 64
STEPS = 4


def demo_store(folder: Path, cfg: SFTConfig) -> GroupStore:
    """The first TRAIN_ROWS demo pairs' chosen responses as a token store of this rank's own."""
    lines = (DEMO / "data" / "train.jsonl").read_text().splitlines()[:TRAIN_ROWS]
    source = folder.with_suffix(".jsonl")
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("\n".join(lines) + "\n")
    build_store([source], folder, Settings.from_config(cfg.data, cfg.model.tokenizer, "demonstrations"),
                progress_every=0)
    return GroupStore(folder)


def run_layout(tp: int, pp: int, checkpoint_dir: Path, out: Path, create: bool) -> None:
    cfg = SFTConfig(
        model=tiny_model_config(),
        parallel=ParallelConfig(tp=tp, pp=pp),
        train=TrainConfig(max_steps=STEPS, global_batch_size=8, micro_batch_size=2, lr=5e-3, seed=11),
        data=DataConfig(max_length=64, bucket_window=0),
    )
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    split = Split.of(demo_store(out.with_name(f"{out.name}_store{os.environ['RANK']}"), cfg))
    layout = parallel.initialize(cfg.parallel, cfg.train.seed)
    vocab = padded_vocab_size(len(tokenizer), cfg.model)

    def fresh_from_checkpoint(save: bool = False):
        model = build_policy_model(cfg.model, cfg.parallel, len(tokenizer))
        state = {"model": checkpoint.ModelState(model, cfg.model, vocab, kind="policy")}
        if save:
            checkpoint.save(checkpoint_dir, 0, state)
        checkpoint.load(checkpoint_dir, state)
        return model

    pad = pad_id(tokenizer)
    objective = build_objective(cfg.loss, 1, vocab_size=len(tokenizer))
    result = {"layout": layout.place(),
              "padded": train_and_evaluate(fresh_from_checkpoint(create), split, layout, cfg, pad, objective, STEPS)}
    # The same steps from the checkpoint with packed micro-batches: same examples, same loss.
    packed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batching="pack", pack_length=96))
    result["packed"] = train_and_evaluate(fresh_from_checkpoint(), split, layout, packed_cfg, pad, objective, STEPS)

    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{layout.rank}.json").write_text(json.dumps(result))
    parallel_state.destroy_model_parallel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--layout", nargs=3, action="append", required=True, metavar=("TP", "PP", "OUT"))
    parser.add_argument("--create", action="store_true", help="the first layout saves the checkpoint")
    args = parser.parse_args()
    for i, (tp, pp, out) in enumerate(args.layout):
        run_layout(int(tp), int(pp), args.checkpoint, Path(out), args.create and i == 0)
    parallel.shutdown()


if __name__ == "__main__":
    main()
