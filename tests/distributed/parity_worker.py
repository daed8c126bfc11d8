"""Layouts of the parity test: score fixed batches and train five steps from one checkpoint.

    torchrun --standalone --nproc-per-node 2 tests/distributed/parity_worker.py --checkpoint DIR \
        --layout 2 1 OUT_TP2 --layout 1 2 OUT_PP2 --layout 1 1 OUT_DP2

Each --layout TP PP OUT runs in turn in the same job, with process groups of its own
(start-up dominates the time of a job). With --create (one rank, TP1) the first
initialises the model and saves the shared checkpoint. Every rank writes
OUT/rank<R>.json: its place in the grid, the rewards it holds after the pipeline
broadcast (right-padded, left-padded and packed batches), every real token's value
collected from the last stage, the per-step training loss with padded and with packed
micro-batches, and at TP>1 a sequence-parallel head check.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_rm.config import DataConfig, ParallelConfig, RMConfig, TrainConfig, padded_vocab_size
from megatron_rm.core import checkpoint
from megatron_rm.core.optim import build_optimizer, train_step
from megatron_rm.core.schedule import collect
from megatron_rm.data import Batch, GroupStore, collate, load_tokenizer, pad_id
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.model import RewardHead, build_reward_model
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.objectives import build_objective
from megatron_rm.runtime import parallel
from megatron_rm.scoring.rewards import document_rewards
from megatron_rm.training.data_setup import MicroBatching, Split, sampler_for, train_micro_batches
from tests.conftest import DEMO, tiny_model_config

SCORED_PAIRS = 6
TRAIN_PAIRS = 64
STEPS = 5


def left_padded(batch: Batch) -> Batch:
    """The same rows with their padding moved to the left."""
    ids, mask = batch.input_ids.clone(), batch.attention_mask.clone()
    width = ids.shape[1]
    for row in range(ids.shape[0]):
        padding = width - int(mask[row].sum())
        ids[row], mask[row] = ids[row].roll(padding), mask[row].roll(padding)
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    return Batch(ids, mask, batch.comparisons, batch.margins)


def sequence_parallel_check(model, layout) -> dict:
    """The head's sequence-split gather against its plain path: outputs and gradients."""
    head = model.reward_head
    sp_config = dataclasses.replace(model.config, sequence_parallel=True)
    sp_head = RewardHead(sp_config, 1, False, 0.02, head.tp_group)
    sp_head.weight.data.copy_(head.weight.data)
    generator = torch.Generator().manual_seed(7)
    seq, batch, hidden = 8, 5, model.config.hidden_size
    states = torch.randn(seq, batch, hidden, generator=generator)
    last = torch.tensor([7, 0, 3, 4, 6])
    full = states.clone().requires_grad_(True)
    rows = torch.arange(batch)
    reference = head(full, rows, last)
    reference.sum().backward()
    chunk = states.chunk(layout.tp)[layout.tp_rank].clone().requires_grad_(True)
    split = sp_head(chunk, rows, last)
    split.sum().backward()
    return {
        "output_diff": (split - reference).abs().max().item(),
        "input_grad_diff": (chunk.grad - full.grad.chunk(layout.tp)[layout.tp_rank]).abs().max().item(),
        "weight_grad_diff": (sp_head.weight.grad - head.weight.grad).abs().max().item(),
    }


def demo_store(folder: Path, cfg: RMConfig) -> GroupStore:
    """The first TRAIN_PAIRS demo pairs as a token store of this rank's own."""
    lines = (DEMO / "data" / "train.jsonl").read_text().splitlines()[:TRAIN_PAIRS]
    source = folder.with_suffix(".jsonl")
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("\n".join(lines) + "\n")
    build_store([source], folder, Settings.from_config(cfg.data, cfg.model.tokenizer))
    return GroupStore(folder)


def train_five_steps(model, store: GroupStore, layout, cfg: RMConfig, pad: int) -> tuple[list, list]:
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, STEPS)
    objective = build_objective(cfg.loss, cfg.model.num_labels)
    split = Split.of(store)
    sampler = sampler_for(split, cfg.data, cfg.train)
    batching = MicroBatching.of(cfg.data, cfg.train.micro_batch_size, pad)
    losses, grad_norms = [], []
    for step in range(STEPS):
        batches = train_micro_batches(split, sampler, step, layout, batching)
        result = train_step(ddp_model, optimizer, scheduler, objective, batches, cfg.train.clip_grad, layout)
        losses.append(objective.summarize(result.sums)["loss"])
        grad_norms.append(result.grad_norm)
    return losses, grad_norms


def token_values(model, batches: list[Batch], layout) -> list[float]:
    """Every real token's value (the head at each position), collected from the last stage."""
    values = collect([model], batches, lambda m, b: forward_documents(m, b, token_values=True), layout,
                     shape=lambda b: (*b.input_ids.shape, 1), dtype=torch.float32)
    return torch.cat([v[b.attention_mask > 0, 0] for v, b in zip(values, batches)]).tolist()


def run_layout(tp: int, pp: int, checkpoint_dir: Path, out: Path, create: bool) -> None:
    cfg = RMConfig(
        model=tiny_model_config(),
        parallel=ParallelConfig(tp=tp, pp=pp),
        train=TrainConfig(max_steps=STEPS, global_batch_size=8, micro_batch_size=2, lr=5e-3, seed=11),
        data=DataConfig(max_length=64, bucket_window=0),
    )
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    store = demo_store(out.with_name(f"{out.name}_store{os.environ['RANK']}"), cfg)
    layout = parallel.initialize(cfg.parallel, cfg.train.seed)
    vocab = padded_vocab_size(len(tokenizer), cfg.model)
    model = build_reward_model(cfg.model, cfg.parallel, len(tokenizer))
    if create:
        checkpoint.save(checkpoint_dir, 0, {"model": checkpoint.ModelState(model, cfg.model, vocab)})
    checkpoint.load(checkpoint_dir, {"model": checkpoint.ModelState(model, cfg.model, vocab)})

    pad = pad_id(tokenizer)
    scored = [list(range(i, i + 3)) for i in range(0, SCORED_PAIRS, 3)]
    batches = [collate(store, groups, pad, packed=False, pad_to_multiple_of=8) for groups in scored]
    packed = [collate(store, groups, pad, packed=True, pad_to_multiple_of=8) for groups in scored]
    model.eval()
    result = {
        "layout": layout.place(),
        "rewards_right": document_rewards([model], batches, layout).tolist(),
        "rewards_left": document_rewards([model], [left_padded(b) for b in batches], layout).tolist(),
        "rewards_packed": document_rewards([model], packed, layout).tolist(),
        "token_values": token_values(model, batches, layout),
    }
    if layout.tp > 1 and layout.is_last_stage:
        result["sequence_parallel"] = sequence_parallel_check(model, layout)
    model.train()

    result["losses"], result["grad_norms"] = train_five_steps(model, store, layout, cfg, pad)
    # The same steps again from the checkpoint, with packed micro-batches: same groups, same loss.
    packed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batching="pack", pack_length=96))
    fresh = build_reward_model(cfg.model, cfg.parallel, len(tokenizer))
    checkpoint.load(checkpoint_dir, {"model": checkpoint.ModelState(fresh, cfg.model, vocab)})
    result["losses_packed"], result["grad_norms_packed"] = train_five_steps(fresh, store, layout, packed_cfg, pad)

    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{layout.rank}.json").write_text(json.dumps(result))
    # The next layout lays out its own process groups in the same torch.distributed job.
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
