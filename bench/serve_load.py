"""Reward server under load: dynamic batching against one request at a time, same model, same load.

    .venv/bin/python bench/serve_load.py                       # both patterns, ~2 minutes on 2 cores
    .venv/bin/python bench/serve_load.py --pattern short --short-requests 2000
    .venv/bin/python bench/serve_load.py --requests 640 --clients 32 --hidden 512 --layers 8

Builds a random Llama reward model (hidden 256, 4 layers by default) with `transformers`
config classes and the demo tokenizer in a temporary folder, then serves it twice with
tools/serve_rm.py on loopback: (a) with dynamic batching (the defaults) and (b) with
`--batch-wait-ms 0 --max-batch-requests 1`. Each server is started once and takes every
load of `--pattern` in turn (default both); in each, `--clients` threads with kept-alive
connections send /score requests of one item, the same texts in the same order to both:

- long-tailed: `--requests` items with log-normal word counts (`--median-words`,
  `--length-sigma`). Target: a ratio of at least 3 on a GPU; on a CPU, near the ceiling below.
- short, the verl reward-loop pattern: `--short-requests` short (prompt, response) items
  of `--short-words` words (8 to 24 by default), each client one text per request.
  Target: a ratio of at least 1.5 on a CPU, at least 3 on a GPU.

For each pattern it prints a markdown table (requests/s, p50 and p99 latency, forwards run)
and the throughput ratio, and checks that both servers gave the same rewards.

For scale it also prints the ceiling batching has on this machine without HTTP: the same
texts scored in process, `--clients` at a time against one at a time. Where one forward is
compute-bound (a CPU), batching saves only the per-forward overhead and the ratio stays near
that ceiling; where it is latency-bound (a GPU), a batch costs little more than one request.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
from demo_llama import save_llama

from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer

REPO = Path(__file__).resolve().parents[1]
WORDS = ("reward model score answer question policy sample token batch forward layer tensor pipeline "
         "helpful honest harmless because therefore however the a of to and in is it that").split()


SERVERS = {"dynamic batching": [], "one at a time": ["--batch-wait-ms", "0", "--max-batch-requests", "1"]}
TARGETS = {"long-tailed": "target >= 3 on a GPU; on a CPU, near the in-process ceiling",
           "short": "target >= 1.5 on a CPU, >= 3 on a GPU"}


def texts(count: int, median_words: int, sigma: float, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs whose word counts are log-normal: mostly short, a few long
    (about 3 tokens a word with the demo tokenizer)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_words), sigma, count), 4, 10 * median_words).astype(int)
    return pairs_of(lengths, rng)


def short_texts(count: int, fewest: int, most: int, seed: int) -> list[tuple[str, str]]:
    """Short (prompt, response) pairs of `fewest` to `most` words (uniform): verl's reward loop
    sends each one alone as it finishes."""
    rng = np.random.default_rng(seed)
    return pairs_of(rng.integers(fewest, most + 1, count), rng)


def pairs_of(lengths: np.ndarray, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One (prompt, response) pair of random words per word count, split half and half."""
    return [(" ".join(rng.choice(WORDS, n // 2)) + "?", " " + " ".join(rng.choice(WORDS, n - n // 2)))
            for n in lengths]


def serve(folder: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    job = subprocess.Popen([sys.executable, str(REPO / "tools" / "serve_rm.py"), "--model", str(folder),
                            "--port", "0", *extra], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in job.stdout:
        if line.startswith("serving "):
            return job, line.split(" on ")[1].split()[0]
    sys.exit(f"the server exited with {job.wait()} before it was ready")


def load(url: str, pairs: list[tuple[str, str]], clients: int) -> dict:
    local = threading.local()

    def one(pair):
        if not hasattr(local, "session"):  # one kept-alive connection per client, as RL frameworks hold them
            local.session = requests.Session()
        start = time.perf_counter()
        item = {"prompt": pair[0], "response": pair[1]}
        answer = local.session.post(url + "/score", json={"items": [item]}, timeout=600)
        answer.raise_for_status()
        return time.perf_counter() - start, answer.json()["rewards"][0]

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, pairs[:clients]))  # warm up: connections, first forwards
        before = requests.get(url + "/health", timeout=60).json()
        start = time.perf_counter()
        results = list(pool.map(one, pairs))
        elapsed = time.perf_counter() - start
    after = requests.get(url + "/health", timeout=60).json()
    latencies = np.array([latency for latency, _ in results]) * 1000
    return {"requests/s": len(pairs) / elapsed, "p50 latency (ms)": np.percentile(latencies, 50),
            "p99 latency (ms)": np.percentile(latencies, 99), "forwards": after["batches"] - before["batches"],
            "rewards": [reward for _, reward in results]}


def in_process(folder: Path, loads: dict[str, list[tuple[str, str]]], clients: int) -> dict[str, float]:
    """Per load: seconds to score every pair one at a time / `clients` at a time, with no server."""
    scorer = Scorer(load_model(folder))
    ceilings = {}
    for pattern, pairs in loads.items():
        sequences = [encoded.ids for encoded in scorer.encoder.texts(pairs)]
        scorer.score(sequences[:clients])  # warm up
        seconds = {}
        for size in (1, clients):
            start = time.perf_counter()
            for first in range(0, len(sequences), size):
                scorer.score(sequences[first:first + size])
            seconds[size] = time.perf_counter() - start
        ceilings[pattern] = seconds[1] / seconds[clients]
    return ceilings


def report(title: str, results: dict[str, dict], target: str, ceiling: float, clients: int) -> None:
    """One pattern's table, ratio and ceiling; fails if the two servers' rewards differ."""
    print(f"\n### {title}\n")
    print(f"| | {' | '.join(results)} |\n|---|---|---|")
    for key in ("requests/s", "p50 latency (ms)", "p99 latency (ms)", "forwards"):
        cells = [f"{result[key]:.1f}" if key != "forwards" else str(result[key]) for result in results.values()]
        print(f"| {key} | {' | '.join(cells)} |")
    batched, alone = results.values()
    print(f"\nthroughput ratio: {batched['requests/s'] / alone['requests/s']:.2f}x ({target}); "
          f"in process, without HTTP, {clients} at a time score {ceiling:.2f}x as fast as one at a time")
    torch.testing.assert_close(torch.tensor(batched["rewards"]), torch.tensor(alone["rewards"]), rtol=1e-4, atol=1e-5)
    print("rewards: the same under both (rtol 1e-4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--median-words", type=int, default=40, help="the load's median text length in words")
    parser.add_argument("--length-sigma", type=float, default=0.8,
                        help="spread of the log-normal lengths (0: every request the same length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pattern", choices=(*TARGETS, "both"), default="both",
                        help="the loads to run: long-tailed lengths, short texts (verl's reward loop), or both")
    parser.add_argument("--short-requests", type=int, default=640, help="requests in the short load")
    parser.add_argument("--short-words", type=int, nargs=2, default=(8, 24), metavar=("FEWEST", "MOST"),
                        help="the short load's words per (prompt, response)")
    args = parser.parse_args()
    if not 2 <= args.short_words[0] <= args.short_words[1]:
        parser.error("--short-words FEWEST MOST needs 2 <= FEWEST <= MOST")
    loads = {}
    if args.pattern in ("long-tailed", "both"):
        loads["long-tailed"] = texts(args.requests, args.median_words, args.length_sigma, args.seed)
    if args.pattern in ("short", "both"):
        loads["short"] = short_texts(args.short_requests, *args.short_words, args.seed)
    results = {pattern: {} for pattern in loads}
    load_before = os.getloadavg()[0]  # other jobs on the machine skew every figure
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir) / "rm"
        tokenizer = save_llama(folder, args.hidden, args.layers, causal_lm=False, max_positions=2048)
        for name, extra in SERVERS.items():
            job, url = serve(folder, extra)
            try:
                for pattern, pairs in loads.items():
                    results[pattern][name] = load(url, pairs, args.clients)
            finally:
                job.terminate()
                job.wait()
        ceilings = in_process(folder, loads, args.clients)
    print(f"\nLlama hidden {args.hidden} x {args.layers} layers, {torch.get_num_threads()} CPU threads, "
          f"{args.clients} clients on kept-alive connections, one item per /score request; "
          f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for pattern, pairs in loads.items():
        tokens = np.percentile([len(tokenizer(p + r)["input_ids"]) for p, r in pairs], [50, 99])
        words = ("log-normal lengths" if pattern == "long-tailed"
                 else f"one short (prompt, response) of {args.short_words[0]}-{args.short_words[1]} words each")
        report(f"{pattern}: {args.clients} clients, {len(pairs)} requests, {words}, "
               f"{tokens[0]:.0f} tokens at the median, {tokens[1]:.0f} at p99",
               results[pattern], TARGETS[pattern], ceilings[pattern], args.clients)


if __name__ == "__main__":
    main()
