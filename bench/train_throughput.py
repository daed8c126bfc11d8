"""Training tokens/s at TP1 on CPU: ours (tools/train_rm.py on megatron-core) beside TRL's
RewardTrainer on the same model shape, data and micro-batches.

    pip install trl==1.16.0                                   # the reference (else a plain loop)
    .venv/bin/python bench/train_throughput.py                # both models; ~15 min on 2 quiet cores
    .venv/bin/python bench/train_throughput.py --models demo --steps 3     # a quick check

Two model shapes: the demo model (conf/model/tiny.yaml, its conf/train_rm.yaml batch) on
examples/demo/data/train.jsonl, and a ~100M-parameter Llama shape (12 layers, hidden 768, 12
heads, 4 query groups, FFN 3072; the demo tokenizer, so nearly every parameter is in the layers)
on 2,048 synthetic pairs, documents of 181-256 tokens (218 on average), written with a fixed
seed from the demo tokenizer's whole-word tokens.

Ours: `python tools/train_rm.py` (one process, TP1, fp32, bucket batching, no evaluation, the
checkpoint only after the last step) for warm-up + measured steps, logging every
gcd(warm-up, measured) steps. Each metrics.jsonl row gives its interval's real tokens and
tokens/s, hence its seconds (timed in the loop, batching included); ours = tokens / seconds
over the rows after the warm-up. Start-up, tokenization and the final save are outside.

Reference: bench/reward_reference.py in its own process: TRL's RewardTrainer, or a plain
transformers + torch loop when trl is absent (--reference forces one). It gets every step's
pairs exactly as our run formed them (replayed from the run's token store with megatron_rm's
sampler and collate), in order, with the same micro-batch size and gradient accumulation; each
micro-batch pads chosen and rejected rows to its longest row rounded up to
data.pad_to_multiple_of, which is our width too (reported: every micro-batch's (rows, width)
compared). Its tokens/s is the same real tokens over the wall clock from the end of the last
warm-up step to the end of the last step; the Trainer's set-up is outside. Both processes get
OMP_NUM_THREADS = MKL_NUM_THREADS = --threads, fp32 and torch.optim.AdamW with a gradient-norm
clip.

The first steps run slow on both sides on CPU (new padded widths, first allocations), hence
the untimed warm-up. Prints markdown: the table, then each side's tokens/s per log interval
(min / median / max, the same intervals on both sides) to show how noisy the machine was.
No timing is asserted. Peak RSS is the main process's, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml
from watch import REPO, run_watched

sys.path.insert(0, str(REPO))
from megatron_rm.config import RMConfig  # noqa: E402
from megatron_rm.data import GroupStore, load_tokenizer, pad_id  # noqa: E402
from megatron_rm.training.data_setup import MicroBatching, Split, sampler_for, train_micro_batches  # noqa: E402

PYTHON = sys.executable
GB = 2**30
TOKENIZER = REPO / "examples" / "demo" / "tokenizer"
SYNTHETIC_PAIRS, SYNTHETIC_SEED = 2048, 0
PROMPT_WORDS, RESPONSE_WORDS = (120, 160), (60, 95)
"""Uniform ranges; a document is prompt + response + EOS: 181 to 256 tokens, 218 on average."""

# Overrides every run gets: TP1 in one process, bucket batching, no evaluation, no mid-run saves,
# no learning-rate warm-up (which must be shorter than the run).
COMMON = ["data.batching=bucket", "data.eval_path=null", "eval.interval=0", "checkpoint.save_interval=0",
          "train.lr_warmup_steps=0"]

MODELS = {
    "demo": SimpleNamespace(
        label="demo (conf/model/tiny.yaml)", steps=200, data=REPO / "examples/demo/data/train.jsonl",
        overrides=["train.global_batch_size=32", "train.micro_batch_size=16", "data.max_length=64"]),
    "100m": SimpleNamespace(
        label="Llama ~100M", steps=10, data=None,
        overrides=["model.num_layers=12", "model.hidden_size=768", "model.num_attention_heads=12",
                   "model.num_query_groups=4", "model.ffn_hidden_size=3072", "model.max_sequence_length=256",
                   "data.max_length=256", "train.global_batch_size=8", "train.micro_batch_size=4",
                   # The demo's 2e-3 is too high at this size (rewards run away within steps).
                   "train.lr=1e-5", "train.min_lr=0"]),
}


def write_synthetic_pairs(path: Path) -> None:
    """Prompt/chosen/rejected texts of the demo tokenizer's whole-word tokens, space-separated,
    so a document's token count is its word count + 1 (EOS)."""
    tokenizer = load_tokenizer(TOKENIZER)
    words = sorted(w for w, i in tokenizer.get_vocab().items()
                   if w.isalpha() and len(w) >= 3 and tokenizer(w, add_special_tokens=False)["input_ids"] == [i])
    rng = random.Random(SYNTHETIC_SEED)

    def text(length_range) -> str:
        return " ".join(rng.choices(words, k=rng.randint(*length_range)))

    with path.open("w") as file:
        for _ in range(SYNTHETIC_PAIRS):
            prompt = text(PROMPT_WORDS)
            row = {"prompt": prompt, "chosen": " " + text(RESPONSE_WORDS), "rejected": " " + text(RESPONSE_WORDS)}
            file.write(json.dumps(row) + "\n")


def run_ours(name: str, preset, data: Path, warmup: int, steps: int, workdir: Path) -> dict:
    run_dir = workdir / f"ours_{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [PYTHON, "tools/train_rm.py", *COMMON, *preset.overrides, f"data.train_path={data}",
               f"train.max_steps={warmup + steps}", f"train.log_interval={math.gcd(warmup, steps)}",
               f"run.dir={run_dir}"]
    watched = run_watched(f"ours_{name}", command, workdir / "logs")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in rows if r["split"] == "train" and r["step"] > warmup]
    assert measured and measured[-1]["step"] == warmup + steps, f"unexpected metrics rows in {run_dir}"
    tokens = sum(r["tokens"] for r in measured)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in measured)
    layout = next((line for line in watched["stdout"].splitlines() if line.startswith("layout:")), "layout: ?")
    return {"run_dir": run_dir, "tokens": tokens, "seconds": seconds, "rss": watched["by_label"]["main"],
            "intervals": [r["tokens_per_s"] for r in measured],
            "layout": layout, "cfg": yaml.safe_load((run_dir / "config.yaml").read_text())}


def replay_batches(run_dir: Path, resolved: dict, total_steps: int) -> tuple[list, list, list]:
    """Every step's pairs (chosen ids, rejected ids) as our run formed them, the (rows, width) of
    each micro-batch, and each step's real tokens."""
    cfg = RMConfig()
    for section in ("train", "data"):
        for key, value in resolved[section].items():
            setattr(getattr(cfg, section), key, value)
    split = Split.of(GroupStore(run_dir / "data" / "train"))
    sampler, layout = sampler_for(split, cfg.data, cfg.train), SimpleNamespace(dp=1, dp_rank=0)
    batching = MicroBatching.of(cfg.data, cfg.train.micro_batch_size, pad_id=0)
    steps, shapes, tokens = [], [], []
    for step in range(total_steps):
        pairs, step_tokens = [], 0
        for batch in train_micro_batches(split, sampler, step, layout, batching):
            rows = [ids[mask > 0].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]
            pairs += [(rows[better], rows[worse]) for better, worse in batch.comparisons.tolist()]
            shapes.append([2 * batch.num_pairs, batch.input_ids.shape[1]])
            step_tokens += batch.tokens
        steps.append(pairs)
        tokens.append(step_tokens)
    return steps, shapes, tokens


def reference_shape(model: dict) -> dict:
    """Our resolved model section as the reference's LlamaConfig fields (the same parameter count:
    the embedding is padded alike; neither side has an LM head)."""
    for key, llama in (("normalization", "RMSNorm"), ("activation", "swiglu"), ("position_embedding_type", "rope")):
        if model[key] != llama:
            sys.exit(f"the reference is a Llama: model.{key}={model[key]!r} has no counterpart (needs {llama})")
    tokenizer = load_tokenizer(REPO / model["tokenizer"])
    multiple = model["make_vocab_size_divisible_by"]
    vocab = -(-(model["vocab_size"] or len(tokenizer)) // multiple) * multiple
    heads = model["num_attention_heads"]
    return {"vocab_size": vocab, "hidden_size": model["hidden_size"], "ffn_hidden_size": model["ffn_hidden_size"],
            "num_layers": model["num_layers"], "num_attention_heads": heads,
            "num_query_groups": model["num_query_groups"] or heads,
            "head_dim": model["kv_channels"] or model["hidden_size"] // heads,
            "max_sequence_length": model["max_sequence_length"], "norm_epsilon": model["norm_epsilon"],
            "rotary_base": model["rotary_base"], "tokenizer": str(REPO / model["tokenizer"]),
            "pad_id": pad_id(tokenizer), "eos_id": tokenizer.eos_token_id}


def run_reference(name: str, ours: dict, warmup: int, steps: int, args, workdir: Path) -> dict:
    cfg = ours["cfg"]
    pairs, shapes, step_tokens = replay_batches(ours["run_dir"], cfg, warmup + steps)
    t = cfg["train"]
    spec = {"model": reference_shape(cfg["model"]), "threads": args.threads, "reference": args.reference,
            "global_batch_size": t["global_batch_size"], "micro_batch_size": t["micro_batch_size"],
            "pad_to_multiple_of": cfg["data"]["pad_to_multiple_of"], "steps": pairs,
            "optimizer": {"lr": t["lr"], "beta1": t["adam_beta1"], "beta2": t["adam_beta2"], "eps": t["adam_eps"],
                          "clip_grad": t["clip_grad"]}}
    spec_path, result_path = workdir / f"reference_{name}.json", workdir / f"reference_{name}_result.json"
    spec_path.write_text(json.dumps(spec))
    watched = run_watched(f"reference_{name}", [PYTHON, "bench/reward_reference.py", str(spec_path),
                                                str(result_path)], workdir / "logs")
    result = json.loads(result_path.read_text())
    ends = result["step_ends"]
    assert len(ends) == warmup + steps, f"reference ran {len(ends)} steps, expected {warmup + steps}"
    tokens = sum(step_tokens[warmup:])
    accumulation = t["global_batch_size"] // t["micro_batch_size"]
    every = math.gcd(warmup, steps)  # our log interval: the same intervals on both sides
    intervals = [sum(step_tokens[start: start + every]) / (ends[start + every - 1] - ends[start - 1])
                 for start in range(warmup, warmup + steps, every)]
    return {"name": result["reference"], "parameters": result["parameters"], "threads": result["threads"],
            "tokens": tokens, "seconds": ends[-1] - ends[warmup - 1], "rss": watched["by_label"]["main"],
            "intervals": intervals,
            "same_batches": result["shapes"] == shapes, "ours_tokens_match": tokens == ours["tokens"],
            "tokens_per_step": tokens / steps,
            "slots_per_step": sum(r * w for r, w in shapes[warmup * accumulation:]) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,100m", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, help="measured steps per model (default: demo 200, 100m 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: steps // 10, at least 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="OMP_NUM_THREADS / torch threads on both sides (default: the cores given)")
    parser.add_argument("--reference", choices=("auto", "trl", "plain"), default="auto",
                        help="auto: TRL's RewardTrainer when trl imports, else the plain loop")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megatron_rm_bench_train_throughput"))
    args = parser.parse_args()
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"unknown --models {unknown}; choose from {', '.join(MODELS)}")
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    results = []
    for name in names:
        preset = MODELS[name]
        steps = args.steps or preset.steps
        warmup = args.warmup or max(2, steps // 10)
        data = preset.data
        if data is None:
            data = args.workdir / f"synthetic_{SYNTHETIC_PAIRS}_seed{SYNTHETIC_SEED}.jsonl"
            write_synthetic_pairs(data)
        ours = run_ours(name, preset, data, warmup, steps, args.workdir)
        reference = run_reference(name, ours, warmup, steps, args, args.workdir)
        results.append((name, preset, steps, warmup, ours, reference))

    print(f"\n{os.cpu_count()} CPU cores, {args.threads} threads a side (load average "
          f"{os.getloadavg()[1]:.1f}); fp32, TP1, one process a side; tokens are real (non-padding) tokens.\n")
    print("| model | parameters | shape | max_length, pairs/step (micro) | tokens/step (slots) | steps (warm-up) "
          "| ours tokens/s | reference tokens/s | ours / reference | peak RSS ours | peak RSS reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for _name, preset, steps, warmup, ours, ref in results:
        m, t = ours["cfg"]["model"], ours["cfg"]["train"]
        shape = (f"{m['num_layers']}x{m['hidden_size']}, {m['num_attention_heads']} heads / "
                 f"{m['num_query_groups'] or m['num_attention_heads']} groups, FFN {m['ffn_hidden_size']}")
        ours_rate, ref_rate = ours["tokens"] / ours["seconds"], ref["tokens"] / ref["seconds"]
        print(f"| {preset.label} | {ref['parameters'] / 1e6:.2f}M | {shape} | {ours['cfg']['data']['max_length']}, "
              f"{t['global_batch_size']} ({t['micro_batch_size']}) | {ref['tokens_per_step']:,.0f} "
              f"({ref['slots_per_step']:,.0f}) | {steps} ({warmup}) | {ours_rate:,.0f} | {ref_rate:,.0f} "
              f"| {ours_rate / ref_rate:.2f} | {ours['rss'] / GB:.2f} GiB | {ref['rss'] / GB:.2f} GiB |")
    print("\nThe same figures per log interval (min / median / max tokens/s), to judge the noise:\n")
    for name, _, steps, warmup, ours, ref in results:
        print(f"- {name}, {len(ours['intervals'])} intervals of {math.gcd(warmup, steps)} steps: ours "
              f"{spread(ours['intervals'])}; reference {spread(ref['intervals'])}")
    print()
    for name, _, _, _, ours, ref in results:
        print(f"{name}: reference {ref['name']}, {ref['threads']} torch threads; ours {ours['layout']}; "
              f"identical micro-batches (rows, width): {ref['same_batches']}; measured tokens equal: "
              f"{ref['ours_tokens_match']}")
    print("Peak RSS is the main process's over its whole run; ours includes the final checkpoint save.")


def spread(rates: list[float]) -> str:
    return f"{min(rates):,.0f} / {statistics.median(rates):,.0f} / {max(rates):,.0f}"


if __name__ == "__main__":
    main()
