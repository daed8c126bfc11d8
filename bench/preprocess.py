"""Preprocessing throughput and peak memory at scale, and peak memory while training from the store.

    .venv/bin/python bench/preprocess.py                       # 1M pairs, ~1 GB of JSON Lines
    .venv/bin/python bench/preprocess.py --pairs 20000         # a quick check
    .venv/bin/python bench/preprocess.py --workers "2" --workdir /tmp/megatron_rm_bench

Writes demo-like rows (about 1 KB each) to `--workdir`, streaming, and reuses the
file while its row count matches. Runs tools/preprocess_data.py once per worker
count, then a 2-rank CPU training run of the tiny model on the store, sampling the
resident memory (RSS) of every process of each job every 0.2 s. Prints a markdown
table; nothing is asserted. Summed RSS counts pages shared between processes
(fork, memory maps) once per process, so it is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

from watch import run_watched

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TARGET_MB = 2048
MB = 2**20
SETTINGS = ["data.max_length=512", "data.truncation=truncate_prompt"]

WORDS = {
    "fruits": "apple cherry fig grape kiwi lemon lime mango melon peach pear plum",
    "sports": "boxing cricket fencing golf hockey judo polo rowing rugby skiing surfing tennis",
    "colors": "black blue brown gray green orange pink purple red teal white yellow",
    "tools": "axe chisel clamp drill file hammer ladder level rake saw shovel wrench",
    "animals": "bear cat cow deer dog fox goat horse mouse otter sheep wolf",
    "cities": "cairo delhi dublin lagos lima oslo paris perth quito rome seoul tokyo",
}
ASKS = ("Name {n} {c}.", "List {n} {c}.", "Write a numbered list of {n} {c}.")


# --- the data file ----------------------------------------------------------------------------------

def demo_like_row(rng: random.Random) -> dict:
    """A demo row made longer: a prompt that lists words already known, and numbered-list answers."""
    category = rng.choice(list(WORDS))
    words = WORDS[category].split()
    n = rng.randint(26, 48)
    known = ", ".join(rng.choices(words, k=rng.randint(10, 40)))
    prompt = f"User: I already know these {category}: {known}. {rng.choice(ASKS).format(n=n, c=category)}\nAssistant:"
    items = rng.choices(words, k=n + 1)
    # The right count is better; the rejected answer is one item short or one too many.
    rejected = items[: n - 1] if rng.random() < 0.5 else items
    return {"prompt": prompt, "chosen": _numbered(items[:n]), "rejected": _numbered(rejected)}


def _numbered(items: list[str]) -> str:
    return "".join(f" {i}. {word}" for i, word in enumerate(items, start=1))


def count_rows(path: Path) -> int:
    with path.open("rb") as file:
        return sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 24), b""))


def ensure_data(path: Path, pairs: int, seed: int) -> None:
    if path.is_file() and count_rows(path) == pairs:
        print(f"reusing {path} ({pairs} rows, {path.stat().st_size / MB:,.0f} MB)", flush=True)
        return
    rng, start = random.Random(seed), time.perf_counter()
    partial = path.with_suffix(".partial")
    with partial.open("w") as file:
        for _ in range(pairs):
            file.write(json.dumps(demo_like_row(rng)) + "\n")
    partial.rename(path)
    print(f"wrote {path}: {pairs} rows, {path.stat().st_size / MB:,.0f} MB "
          f"({path.stat().st_size / pairs:,.0f} bytes/row) in {time.perf_counter() - start:.0f} s", flush=True)


# --- running a job and watching its memory ----------------------------------------------------------

# --- the benchmark ----------------------------------------------------------------------------------

def preprocess(data: Path, store: Path, workers: int, logs: Path) -> dict:
    result = run_watched(f"preprocess_w{workers}", [
        PYTHON, "tools/preprocess_data.py", "--input", str(data), "--output", str(store),
        "--workers", str(workers), "--overwrite", *SETTINGS], logs)
    meta = json.loads((store / "meta.json").read_text())
    # The tool times build_store itself, without interpreter start-up and imports.
    timed = re.search(r" in ([0-9.]+) s \(", result["stdout"])
    result.update(rows=meta["rows"], groups=meta["groups"], tokens=meta["tokens"], dropped=meta["dropped"],
                  build_seconds=float(timed.group(1)) if timed else result["seconds"])
    return result


def train(store: Path, run_dir: Path, logs: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_watched("train", [
        TORCHRUN, "--standalone", "--nproc-per-node", "2", "tools/train_rm.py",
        f"data.train_path={store}", "data.eval_path=null", *SETTINGS, "model.max_sequence_length=512",
        "train.max_steps=20", "train.lr_warmup_steps=0", "train.log_interval=10", f"run.dir={run_dir}"], logs)


def verdict(mb: float) -> str:
    return f"< {TARGET_MB} MB {'PASS' if mb < TARGET_MB else 'MISS'}"


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1 2", help="worker counts to run, e.g. \"1 2\"")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megatron_rm_bench"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split()]
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = args.workdir / f"pairs_{args.pairs}.jsonl"
    ensure_data(data, args.pairs, args.seed)

    runs = {}
    for w in workers:
        runs[w] = preprocess(data, args.workdir / f"store_{args.pairs}_w{w}", w, logs)
        r = runs[w]
        print(f"  {w} worker(s): {r['build_seconds']:.1f} s, peak RSS {r['peak_total'] / MB:,.0f} MB", flush=True)
    store = args.workdir / f"store_{args.pairs}_w{workers[-1]}"
    trained = train(store, args.workdir / "run", logs)

    print(f"\n### Preprocessing {data.name} ({data.stat().st_size / MB:,.0f} MB) and training from it\n")
    print(f"Settings: {' '.join(SETTINGS)}; {os.cpu_count()} CPU cores (load average now "
          f"{os.getloadavg()[1]:.1f}: other jobs slow the wall-clock figures). Store: {folder_mb(store):,.0f} MB.\n")
    print("| job | rows | tokens | seconds | CPU s | tokens/s | peak RSS, all processes (MB) "
          "| peak RSS, largest process (MB) | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, r in runs.items():
        print(f"| preprocess, {w} worker(s) | {r['rows']:,} | {r['tokens']:,} | {r['build_seconds']:.1f} "
              f"(wall {r['seconds']:.1f}) | {r['cpu_seconds']:.0f} | {r['tokens'] / r['build_seconds']:,.0f} "
              f"| {r['peak_total'] / MB:,.0f} | {r['peak_process'] / MB:,.0f} | {verdict(r['peak_total'] / MB)} |")
    ranks = sorted((label, rss) for label, rss in trained["by_label"].items() if label.startswith("rank"))
    for label, rss in ranks:
        print(f"| train 20 steps, {label} | | | | | | | {rss / MB:,.0f} | {verdict(rss / MB)} |")
    t = trained
    print(f"| train 20 steps, all processes | {runs[workers[-1]]['groups']:,} groups | | {t['seconds']:.1f} "
          f"| {t['cpu_seconds']:.0f} | | {t['peak_total'] / MB:,.0f} | {t['peak_process'] / MB:,.0f} | |")
    print()
    for w, r in runs.items():
        print(f"- preprocess, {w} worker(s): dropped {r['dropped'] or 'none'}; peak RSS by process: "
              + ", ".join(f"{k} {v / MB:,.0f} MB" for k, v in r["by_label"].items())
              + f"; main process RSS at 25/50/75/100% of the run: {_quartiles(r['root_trace'])} MB")
    print("- train, peak RSS by process: "
          + ", ".join(f"{k} {v / MB:,.0f} MB" for k, v in sorted(trained["by_label"].items()))
          + f" (torchrun's launcher is 'main'); the store is {folder_mb(store):,.0f} MB, memory-mapped")


def _quartiles(trace: list[int]) -> str:
    if not trace:
        return "n/a"
    return " / ".join(f"{trace[min(len(trace) - 1, len(trace) * q // 4)] / MB:,.0f}" for q in (1, 2, 3, 4))


if __name__ == "__main__":
    main()
