"""Supervised fine-tuning speed against a plain transformers loop on the same batches (CPU).

    .venv/bin/python bench/sft_throughput.py
    .venv/bin/python bench/sft_throughput.py --hidden 512 --layers 8 --steps 10

Builds a random Llama causal LM (hidden 256, 4 layers by default) with `transformers` config
classes and the demo tokenizer in a temporary folder. Both sides start from its weights:
ours loads it as a policy (converted in memory) and trains with megatron-core's DDP, Adam and
schedule through `core.optim.train_step` and the SFT objective; the reference is a plain
loop over `LlamaForCausalLM` with torch's AdamW. Both see the same steps: the demo's
{prompt, chosen} rows, `--global-batch` per step in `--micro-batch` micro-batches (each
micro-batch padded to its longest row), the loss the mean NLL over the step's response
tokens, the same learning rate (constant), betas, eps, no weight decay, clip 1.0.

Prints a markdown table (tokens/s over the timed steps, after `--warmup` untimed ones), the
ratio, and the largest difference between the two sides' per-step losses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
from demo_llama import save_llama

from megatron_rm.config import LossConfig, OptimizerConfig
from megatron_rm.core.optim import build_optimizer, train_step
from megatron_rm.data import document_batch
from megatron_rm.data.tokenize import encode_many
from megatron_rm.loading.models import load_policy
from megatron_rm.objectives import build_objective

REPO = Path(__file__).resolve().parents[1]
LR = 1e-3


def steps_of(tokenizer, global_batch: int, micro_batch: int, steps: int) -> list[list[tuple[list, list]]]:
    """Each step's micro-batches: (ids, prompt lengths) of `micro_batch` rows, in data order."""
    rows = [json.loads(line) for line in (REPO / "examples" / "demo" / "data" / "train.jsonl").open()]
    encoded = encode_many(tokenizer, [(row["prompt"], row["chosen"]) for row in rows[:global_batch * steps]])
    micro = [encoded[i:i + micro_batch] for i in range(0, len(encoded), micro_batch)]
    per_step = global_batch // micro_batch
    return [[([e.ids for e in m], [e.prompt_tokens for e in m]) for m in micro[s * per_step:(s + 1) * per_step]]
            for s in range(steps)]


def ours(folder: Path, steps, pad: int) -> tuple[list[float], list[float]]:
    policy = load_policy(folder)
    model = policy.chunks[0].train()
    ddp, optimizer, scheduler = build_optimizer(model, OptimizerConfig(lr=LR, lr_decay_style="constant"),
                                                len(steps))
    objective = build_objective(LossConfig(type="sft"), 1, vocab_size=policy.vocab_size)
    losses, seconds = [], []
    for micro_batches in steps:
        batches = [document_batch(ids, pad, prompt_lengths=prompts) for ids, prompts in micro_batches]
        started = time.perf_counter()
        result = train_step(ddp, optimizer, scheduler, objective, batches, 1.0, policy.layout)
        seconds.append(time.perf_counter() - started)
        losses.append(objective.summarize(result.sums)["loss"])
    return losses, seconds


def reference(folder: Path, steps, pad: int) -> tuple[list[float], list[float]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, seconds = [], []
    for micro_batches in steps:
        started = time.perf_counter()
        optimizer.zero_grad()
        total = sum(len(ids) - prompt for ids_list, prompts in micro_batches for ids, prompt in zip(ids_list, prompts))
        step_loss = 0.0
        for ids_list, prompts in micro_batches:
            width = max(map(len, ids_list))
            ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in ids_list])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in ids_list])
            labels = torch.tensor([[-100] * prompt + ids[prompt:] + [-100] * (width - len(ids))
                                   for ids, prompt in zip(ids_list, prompts)])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum",
                                                    ignore_index=-100)
            (nll / total).backward()
            step_loss += float(nll.detach()) / total
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
        losses.append(step_loss)
    return losses, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = save_llama(Path(folder), args.hidden, args.layers, causal_lm=True, max_positions=256)
        steps = steps_of(tokenizer, args.global_batch, args.micro_batch, args.steps)
        pad = tokenizer.pad_token_id
        results = {"transformers loop": reference(Path(folder), steps, pad), "ours (megatron-core)":
                   ours(Path(folder), steps, pad)}
    tokens = sum(len(ids) for micro in steps[args.warmup:] for ids_list, _ in micro for ids in ids_list)
    print(f"{args.steps} steps ({args.warmup} untimed) of {args.global_batch} rows in micro-batches of "
          f"{args.micro_batch}, Llama hidden {args.hidden} x {args.layers} layers, {torch.get_num_threads()} CPU "
          f"threads\n")
    print("| trainer | seconds (timed steps) | tokens/s | first loss | last loss |\n|---|---:|---:|---:|---:|")
    for name, (losses, seconds) in results.items():
        timed = sum(seconds[args.warmup:])
        print(f"| {name} | {timed:.2f} | {tokens / timed:.0f} | {losses[0]:.4f} | {losses[-1]:.4f} |")
    (ref_losses, ref_seconds), (our_losses, our_seconds) = results.values()
    print(f"\nours / transformers: {sum(ref_seconds[args.warmup:]) / sum(our_seconds[args.warmup:]):.2f}x; "
          f"largest per-step loss difference {max(abs(a - b) for a, b in zip(ref_losses, our_losses)):.2e}")


if __name__ == "__main__":
    main()
