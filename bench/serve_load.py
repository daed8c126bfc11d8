"""Reward server under load: dynamic batching against one request at a time, same model, same load.

    .venv/bin/python bench/serve_load.py
    .venv/bin/python bench/serve_load.py --requests 640 --clients 32 --hidden 512 --layers 8

Builds a random Llama reward model (hidden 256, 4 layers by default) with `transformers`
config classes and the demo tokenizer in a temporary folder, then serves it twice with
tools/serve_rm.py on loopback: (a) with dynamic batching (the defaults) and (b) with
`--batch-wait-ms 0 --max-batch-requests 1`. Each time, `--clients` threads with kept-alive
connections send `--requests` /score requests in all, one item each, with long-tailed
lengths (log-normal word counts, the same texts in the same order for both). Prints a
markdown table (requests/s, p50 and p99 latency, forwards run) and the throughput ratio,
and checks that both servers gave the same rewards. Target: a ratio of at least 3.

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

from megatron_rm.scoring.load import load_model
from megatron_rm.scoring.scorer import Scorer

REPO = Path(__file__).resolve().parents[1]
WORDS = ("reward model score answer question policy sample token batch forward layer tensor pipeline "
         "helpful honest harmless because therefore however the a of to and in is it that").split()


def texts(count: int, median_words: int, sigma: float, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs whose word counts are log-normal: mostly short, a few long
    (about 3 tokens a word with the demo tokenizer)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_words), sigma, count), 4, 10 * median_words).astype(int)
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


def in_process(folder: Path, pairs: list[tuple[str, str]], clients: int) -> float:
    """Seconds to score every pair one at a time / `clients` at a time, with no server."""
    scorer = Scorer(load_model(folder))
    sequences = [encoded.ids for encoded in scorer.encoder.texts(pairs)]
    scorer.score(sequences[:clients])  # warm up
    seconds = {}
    for size in (1, clients):
        start = time.perf_counter()
        for first in range(0, len(sequences), size):
            scorer.score(sequences[first:first + size])
        seconds[size] = time.perf_counter() - start
    return seconds[1] / seconds[clients]


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
    args = parser.parse_args()
    pairs = texts(args.requests, args.median_words, args.length_sigma, args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = save_llama(Path(workdir) / "rm", args.hidden, args.layers, causal_lm=False, max_positions=2048)
        lengths = np.percentile([len(tokenizer(p + r)["input_ids"]) for p, r in pairs], [50, 99])
        for name, extra in (("dynamic batching", []), ("one at a time", ["--batch-wait-ms", "0",
                                                                          "--max-batch-requests", "1"])):
            job, url = serve(Path(workdir) / "rm", extra)
            try:
                results[name] = load(url, pairs, args.clients)
            finally:
                job.terminate()
                job.wait()
        ceiling = in_process(Path(workdir) / "rm", pairs, args.clients)
    batched, alone = results.values()
    print(f"{args.requests} requests of {lengths[0]:.0f} tokens at the median, {lengths[1]:.0f} at p99, "
          f"{args.clients} clients, Llama hidden {args.hidden} x {args.layers} layers, "
          f"{torch.get_num_threads()} CPU threads\n")
    print(f"| | {' | '.join(results)} |\n|---|---|---|")
    for key in ("requests/s", "p50 latency (ms)", "p99 latency (ms)", "forwards"):
        cells = [f"{result[key]:.1f}" if key != "forwards" else str(result[key]) for result in results.values()]
        print(f"| {key} | {' | '.join(cells)} |")
    print(f"\nthroughput ratio: {batched['requests/s'] / alone['requests/s']:.2f}x (target >= 3); "
          f"in process, without HTTP, {args.clients} at a time score {ceiling:.2f}x as fast as one at a time")
    torch.testing.assert_close(torch.tensor(batched["rewards"]), torch.tensor(alone["rewards"]), rtol=1e-4, atol=1e-5)
    print("rewards: the same under both (rtol 1e-4)")


if __name__ == "__main__":
    main()
