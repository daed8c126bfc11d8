"""Layouts of the ORM/PRM parity test: train a token-head reward model a few steps from one checkpoint.

    torchrun --standalone --nproc-per-node 2 tests/distributed/token_parity_worker.py --checkpoint DIR \
        --layout 2 1 OUT_TP2 --layout 1 2 OUT_PP2 --layout 1 1 OUT_DP2

Each --layout TP PP OUT runs in turn in the same job, with process groups of its own, for
loss.type=prm and loss.type=orm. With --create (one rank, TP1) the first layout initialises
the model and saves the shared checkpoint. Every rank writes OUT/rank<R>.json: per loss, the
per-step loss, labelled tokens and gradient norm with padded and with packed micro-batches,
and the evaluation summary of the trained weights.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

from megatron.core import parallel_state

from megatron_rm.config import DataConfig, LossConfig, ParallelConfig, RMConfig, TrainConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.data import GroupStore, load_tokenizer, pad_id
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.model import build_reward_model
from megatron_rm.objectives import build_objective, model_for_loss
from megatron_rm.runtime import parallel
from megatron_rm.training.data_setup import Split, labelling_for
from tests.conftest import tiny_model_config
from tests.distributed.layout_steps import train_and_evaluate
from tests.objectives.step_rows import outcome_rows, stepwise_rows, write_rows

STEPS = 4
ROWS = {"prm": (stepwise_rows, "steps"), "orm": (outcome_rows, "outcomes")}


def store(folder: Path, cfg: RMConfig) -> GroupStore:
    """48 rows of the loss's kind as a token store of this rank's own."""
    make, grouping = ROWS[cfg.loss.type]
    source = write_rows(folder.with_suffix(".jsonl"), make(48, seed=3))
    build_store([source], folder, Settings.from_config(cfg.data, cfg.model.tokenizer, grouping, labelling_for(cfg)),
                progress_every=0)
    return GroupStore(folder)


def run_loss(loss: str, tp: int, pp: int, checkpoint_dir: Path, out: Path, create: bool) -> dict:
    cfg = RMConfig(
        parallel=ParallelConfig(tp=tp, pp=pp),
        train=TrainConfig(max_steps=STEPS, global_batch_size=8, micro_batch_size=2, lr=5e-3, seed=11),
        data=DataConfig(max_length=64, bucket_window=0),
        loss=LossConfig(type=loss),
    )
    cfg = dataclasses.replace(cfg, model=model_for_loss(cfg.loss, tiny_model_config()))
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    split = Split.of(store(out.with_name(f"{out.name}_{loss}_store{os.environ['RANK']}"), cfg))
    layout = parallel.initialize(cfg.parallel, cfg.train.seed)
    vocab = padded_vocab_size(len(tokenizer), cfg.model)
    folder = checkpoint_dir / loss

    def fresh_from_checkpoint(save: bool = False):
        model = build_reward_model(cfg.model, cfg.parallel, len(tokenizer))
        state = {"model": checkpoint.ModelState(model, cfg.model, vocab)}
        if save:
            checkpoint.save(folder, 0, state)
        checkpoint.load(folder, state)
        return model

    pad, objective = pad_id(tokenizer), build_objective(cfg.loss, cfg.model.num_labels)
    result = {"layout": layout.place(),
              "padded": train_and_evaluate(fresh_from_checkpoint(create), split, layout, cfg, pad, objective, STEPS)}
    # The same steps from the checkpoint with packed micro-batches: same documents, same loss.
    packed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batching="pack", pack_length=96))
    result["packed"] = train_and_evaluate(fresh_from_checkpoint(), split, layout, packed_cfg, pad, objective, STEPS)
    parallel_state.destroy_model_parallel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--layout", nargs=3, action="append", required=True, metavar=("TP", "PP", "OUT"))
    parser.add_argument("--create", action="store_true", help="the first layout saves the checkpoints")
    args = parser.parse_args()
    for i, (tp, pp, out) in enumerate(args.layout):
        out = Path(out)
        result = {loss: run_loss(loss, int(tp), int(pp), args.checkpoint, out, args.create and i == 0) for loss in ROWS}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
