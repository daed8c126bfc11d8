"""Print a run's evaluations from run.dir/metrics.jsonl; with pairs, the last line is the held-out accuracy.

    python tools/summarize_run.py runs/demo
"""

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").open()]
    evals = [row for row in rows if row["split"] == "eval"]
    if not evals:
        raise SystemExit(f"{args.run_dir}/metrics.jsonl has no evaluation rows")
    columns = [(name, width) for name, width in (("loss", 8), ("accuracy", 9), ("margin", 8), ("pairs", 6),
                                                 ("documents", 9), ("reward_mean", 12))
               if any(name in row for row in evals)]
    print(f"{'step':>6} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for row in evals:
        print(f"{row['step']:>6} " + " ".join(f"{_cell(row.get(name)):>{width}}" for name, width in columns))
    if "accuracy" in evals[-1]:  # pointwise data (no pairs) has no pairwise accuracy
        print(f"held-out pairwise accuracy: {evals[-1]['accuracy']:.3f}")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
