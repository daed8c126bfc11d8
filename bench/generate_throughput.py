"""Generation speed against transformers' `generate` on the same model, prompts and settings (CPU).

    .venv/bin/python bench/generate_throughput.py
    .venv/bin/python bench/generate_throughput.py --hidden 512 --layers 8 --batch 32 --new-tokens 128

Builds a random Llama causal LM (hidden 256, 4 layers by default) with `transformers` config
classes and the demo tokenizer in a temporary folder, loads it as our policy (converted in
memory), and generates greedily for one batch of `--batch` prompts of mixed lengths,
`--new-tokens` new tokens each (EOS is never reached: no stop token is set on either side),
with both, and with the vLLM engine (`--vllm`, when vLLM is installed: the same rollout engine
`rollout.engine=vllm` runs, its weights loaded through the weight stream). Prints a markdown
table (tokens/s, seconds per run, the best of `--repeats`), the ratio (target >= 1.0) and
whether they produced the same tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import transformers
from demo_llama import save_llama

from megatron_rm.config import POLICY
from megatron_rm.convert.weight_stream import hf_weights
from megatron_rm.generation.engines import build_engine
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.models import load_policy

REPO = Path(__file__).resolve().parents[1]
WORDS = "list item color fruit sport animal city river write name give the a of and numbered please".split()


def prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 96, count)
    return [tokenizer(" ".join(rng.choice(WORDS, n)), add_special_tokens=False)["input_ids"][:n] for n in lengths]


def engine(policy, name: str):
    """The rollout engine `name` on `policy`, its weights loaded."""
    built = build_engine(name, policy.chunks, policy.layout, policy.config, vocab_size=policy.vocab_size,
                         eos_token_ids=(), dtype=torch.float32, cuda=False)
    built.load_weights(hf_weights(policy.chunks, policy.layout, policy.config, POLICY, policy.vocab_size), 0)
    return built


def ours(engine, batch: list[list[int]], new_tokens: int) -> list[list[int]]:
    completions = engine.generate(batch, SamplingParams(max_new_tokens=new_tokens, temperature=0),
                                  [(0, row) for row in range(len(batch))])
    return [completion.token_ids for completion in completions]


def reference(model, pad_id: int, batch: list[list[int]], new_tokens: int) -> list[list[int]]:
    longest = max(map(len, batch))
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=pad_id, eos_token_id=None)
    return out[:, longest:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm", action="store_true", help="add the vLLM engine (vLLM installed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        save_llama(Path(folder), args.hidden, args.layers, causal_lm=True, max_positions=1024)
        policy = load_policy(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        batch = prompts(policy.tokenizer, args.batch, args.seed)
        runs = {"transformers generate": lambda: reference(model, policy.tokenizer.pad_token_id, batch,
                                                           args.new_tokens),
                "ours (megatron KV cache)": partial(ours, engine(policy, "megatron"), batch, args.new_tokens)}
        if args.vllm:
            runs["vLLM engine"] = partial(ours, engine(policy, "vllm"), batch, args.new_tokens)
        seconds, tokens = {}, {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                tokens[name] = run()
                seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - started)
    generated = args.batch * args.new_tokens
    print(f"{args.batch} prompts of {min(map(len, batch))}-{max(map(len, batch))} tokens, {args.new_tokens} new "
          f"tokens each, greedy, Llama hidden {args.hidden} x {args.layers} layers, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| generator | seconds | new tokens/s |\n|---|---:|---:|")
    for name in runs:
        print(f"| {name} | {seconds[name]:.2f} | {generated / seconds[name]:.0f} |")
    reference_name, our_name, *others = runs
    print(f"\nours / transformers: {seconds[reference_name] / seconds[our_name]:.2f}x (target >= 1.0)")
    for other in others:
        print(f"{other} / transformers: {seconds[reference_name] / seconds[other]:.2f}x")
    for name in (our_name, *others):
        same = sum(a == b for a, b in zip(tokens[reference_name], tokens[name]))
        print(f"{name}: the same tokens as transformers in {same} of {args.batch} rows")


if __name__ == "__main__":
    main()
