"""Print a run's evaluations from run.dir/metrics.jsonl; the last line is the held-out accuracy.

    python tools/summarize_run.py runs/demo
"""

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").open()]
    evals = [row for row in rows if row["split"] == "eval"]
    if not evals:
        raise SystemExit(f"{args.run_dir}/metrics.jsonl has no evaluation rows")
    print(f"{'step':>6} {'loss':>8} {'accuracy':>9} {'margin':>8} {'pairs':>6}")
    for row in evals:
        print(f"{row['step']:>6} {row['loss']:>8.4f} {row['accuracy']:>9.3f} {row['margin']:>8.3f} {row['pairs']:>6}")
    print(f"held-out pairwise accuracy: {evals[-1]['accuracy']:.3f}")


if __name__ == "__main__":
    main()
