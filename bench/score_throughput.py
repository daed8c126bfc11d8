"""Batch-scoring throughput: our scorer (one process, bucket and pack batching) against the
plain loop a user would write with transformers, on the same model and the same rows.

    .venv/bin/python bench/score_throughput.py
    .venv/bin/python bench/score_throughput.py --rows 1024 --hidden 512 --layers 8 --seed 1

The model is a random Llama reward model built from transformers' config classes, big
enough that compute dominates (hidden 256, 4 layers by default), saved with the demo
tokenizer to a temporary folder and loaded by both sides. The rows have long-tailed,
lognormal token counts between 8 and 512, as real prompts and responses do. The reference
scores batches of 16 in input order with the tokenizer's `padding=True`, so each batch is
as wide as its longest row; ours plans length-grouped micro-batches under a token budget.

Pack runs twice: at bucket's token budget, and at one longest row (512). Without
TransformerEngine (on the CPU) a packed row's attention is dense under a block-diagonal
mask, so its cost grows with the square of the packed row's length, not of each document's.

Both sides include tokenization; each side's fastest of `--repeats` interleaved runs counts
(a shared machine's load comes and goes). Prints a markdown table with the speed-ups and
the largest reward difference from the reference; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from demo_llama import save_llama

from megatron_rm.core.micro_batches import padding_efficiency, plan
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer, ScoreSettings

SHORTEST, LONGEST, MEDIAN, SIGMA = 8, 512, 64, 0.9
REFERENCE_BATCH = 16
REFERENCE = "reference (transformers, batches of 16)"
WORDS = ("red", "blue", "green", "apple", "river", "stone", "seven", "quiet", "market", "window", "garden",
         "paper", "light", "number", "answer", "question", "because", "before", "after", "small")


def make_texts(tokenizer, rows: int, seed: int) -> list[str]:
    """Texts of lognormal token counts in [SHORTEST, LONGEST), the EOS included."""
    rng = np.random.default_rng(seed)
    targets = np.clip(rng.lognormal(np.log(MEDIAN), SIGMA, rows), SHORTEST, LONGEST - 1).astype(int)
    texts = []
    for target in targets:
        words = " ".join(rng.choice(WORDS, size=LONGEST))
        offsets = tokenizer(words, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        texts.append(words[:offsets[target - 2][1]])  # the text of its first target - 1 tokens
    return texts


def reference_scores(model, tokenizer, texts: list[str]) -> tuple[torch.Tensor, list[int], float]:
    """The plain loop: batches of 16 in input order, padded to each batch's longest row."""
    rewards, real, slots = [], 0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), REFERENCE_BATCH):
            batch = [text + tokenizer.eos_token for text in texts[start:start + REFERENCE_BATCH]]
            inputs = tokenizer(batch, padding=True, add_special_tokens=False, return_tensors="pt")
            rewards.append(model(**inputs).logits[:, 0])
            real, slots = real + int(inputs["attention_mask"].sum()), slots + inputs["input_ids"].numel()
    return torch.cat(rewards), real, real / slots


def our_scores(scorer: Scorer, texts: list[str]) -> tuple[torch.Tensor, list[int], float]:
    sequences = [encoded.ids for encoded in scorer.encoder.texts([("", text) for text in texts])]
    rewards = scorer.score(sequences)[:, 0]
    lengths = [len(ids) for ids in sequences]
    settings = scorer.settings
    return rewards, sum(lengths), padding_efficiency(plan(lengths, settings.max_tokens, settings.batching),
                                                     lengths, settings.batching)


def measure(runs: dict, texts: list[str], repeats: int) -> dict:
    """Each run's (rewards, tokens, padding efficiency, best seconds of `repeats`), the runs
    interleaved so that a busy machine slows them alike; after a warm-up on a few rows."""
    results = {}
    for run in runs.values():
        run(texts[:2 * REFERENCE_BATCH])
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            result = run(texts)
            seconds = time.perf_counter() - started
            if name not in results or seconds < results[name][3]:
                results[name] = (*result, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8192, help="our micro-batch token budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each scorer; the fastest counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # Positions to spare: a cut text may encode a token longer than the tokens it was cut from.
        tokenizer = save_llama(Path(folder), args.hidden, args.layers, causal_lm=False, max_positions=2 * LONGEST,
                               kv_heads=args.hidden // 64)
        texts = make_texts(tokenizer, args.rows, args.seed)
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
        model = load_model(folder)
        runs = {REFERENCE: lambda rows: reference_scores(reference, tokenizer, rows)}
        for batching, max_tokens in (("bucket", args.max_tokens), ("pack", args.max_tokens), ("pack", LONGEST)):
            scorer = Scorer(model, ScoreSettings(max_tokens=max_tokens, batching=batching))
            runs[f"ours, {batching}, max_tokens {max_tokens}"] = lambda rows, scorer=scorer: our_scores(scorer, rows)
        results = measure(runs, texts, args.repeats)
    baseline = results[REFERENCE]
    lengths = [len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for text in texts]
    print(f"{args.rows} rows, {sum(lengths)} tokens (median {int(np.median(lengths))}, max {max(lengths)}), "
          f"hidden {args.hidden}, {args.layers} layers, {torch.get_num_threads()} CPU threads\n")
    print("| scorer | tokens/s | rows/s | padding efficiency | speed-up | max abs diff vs reference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (rewards, tokens, efficiency, seconds) in results.items():
        speedup = baseline[3] / seconds
        difference = (rewards - baseline[0]).abs().max().item()
        print(f"| {name} | {tokens / seconds:,.0f} | {args.rows / seconds:,.1f} | {efficiency:.3f} | "
              f"{speedup:.2f}x | {difference:.2e} |")


if __name__ == "__main__":
    main()
