"""One layout of the parity test: score fixed batches and train five steps from one checkpoint.

    torchrun --standalone --nproc-per-node 4 tests/distributed/parity_worker.py \
        --tp 2 --pp 2 --checkpoint DIR --out DIR [--create]

With --create (one rank, TP1) it first initialises the model and saves the
shared checkpoint. Every rank writes out/rank<R>.json: its place in the grid,
the rewards it holds after the pipeline broadcast (right- and left-padded
batches), the per-step training loss, and at TP>1 a sequence-parallel head check.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from megatron_rm import parallel
from megatron_rm.config import DataConfig, ParallelConfig, RMConfig, TrainConfig, padded_vocab_size
from megatron_rm.data import PairSampler, collate, load_tokenizer, pad_id, read_pairs, tokenize_pairs
from megatron_rm.data.batching import PairBatch
from megatron_rm.metrics import summarize
from megatron_rm.model import RewardHead, build_reward_model
from megatron_rm.training import checkpoint
from megatron_rm.training.loop import build_optimizer, micro_batches, train_step
from megatron_rm.training.step import score
from tests.conftest import DEMO, tiny_model_config

SCORED_PAIRS = 6
TRAIN_PAIRS = 64
STEPS = 5


def left_padded(batch: PairBatch) -> PairBatch:
    """The same rows with their padding moved to the left."""
    ids, mask = batch.input_ids.clone(), batch.attention_mask.clone()
    width = ids.shape[1]
    for row in range(ids.shape[0]):
        padding = width - int(mask[row].sum())
        ids[row], mask[row] = ids[row].roll(padding), mask[row].roll(padding)
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    return PairBatch(ids, mask, batch.num_pairs)


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
    reference = head(full, last)
    reference.sum().backward()
    chunk = states.chunk(layout.tp)[layout.tp_rank].clone().requires_grad_(True)
    split = sp_head(chunk, last)
    split.sum().backward()
    return {
        "output_diff": (split - reference).abs().max().item(),
        "input_grad_diff": (chunk.grad - full.grad.chunk(layout.tp)[layout.tp_rank]).abs().max().item(),
        "weight_grad_diff": (sp_head.weight.grad - head.weight.grad).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--create", action="store_true")
    args = parser.parse_args()

    cfg = RMConfig(
        model=tiny_model_config(),
        parallel=ParallelConfig(tp=args.tp, pp=args.pp),
        train=TrainConfig(max_steps=STEPS, global_batch_size=8, micro_batch_size=2, lr=5e-3, seed=11),
        data=DataConfig(max_length=64),
    )
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    pairs, _ = tokenize_pairs(read_pairs(DEMO / "data" / "train.jsonl")[:TRAIN_PAIRS], tokenizer, 64)
    layout = parallel.initialize(cfg.parallel, cfg.train.seed)
    vocab = padded_vocab_size(len(tokenizer), cfg.model)
    model = build_reward_model(cfg.model, cfg.parallel, len(tokenizer))
    if args.create:
        checkpoint.save(model, args.checkpoint, 0, cfg.model, vocab)
    checkpoint.load(model, args.checkpoint, cfg.model, vocab)

    pad = pad_id(tokenizer)
    batches = [collate(pairs[i : i + 3], pad, 8) for i in range(0, SCORED_PAIRS, 3)]
    model.eval()
    result = {
        "layout": dataclasses.asdict(layout),
        "rewards_right": score([model], batches).tolist(),
        "rewards_left": score([model], [left_padded(b) for b in batches]).tolist(),
    }
    if layout.tp > 1 and layout.is_last_stage:
        result["sequence_parallel"] = sequence_parallel_check(model, layout)
    model.train()

    ddp_model, optimizer, scheduler = build_optimizer(model, cfg)
    sampler = PairSampler(len(pairs), cfg.train.global_batch_size, cfg.train.seed)
    losses, grad_norms = [], []
    for step in range(STEPS):
        index_lists = sampler.micro_batches(step, layout.dp, layout.dp_rank, cfg.train.micro_batch_size)
        sums, grad_norm = train_step(ddp_model, optimizer, scheduler, micro_batches(pairs, index_lists, pad, cfg))
        losses.append(summarize(sums)["loss"])
        grad_norms.append(grad_norm)
    result.update(losses=losses, grad_norms=grad_norms)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{layout.rank}.json").write_text(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
