"""Outcome and process reward models on synthetic arithmetic chains, end to end (`make prm-demo`).

    python examples/prm/run.py                 # about 5 minutes on 2 CPU cores
    python examples/prm/run.py --steps 600     # both models 600 steps

1. writes the step-labelled chains (`make_data.py`: train and held-out eval, stepwise rows
   for the PRM and outcome rows for the ORM, the same chains) and trains a small tokenizer
   on them (`train_tokenizer.py`: one token per digit, "\n" always its own token);
2. trains a PRM (`tools/train_rm.py loss.type=prm`) and an ORM (`loss.type=orm`) on 2
   processes, the tiny model of MODEL below. The ORM scores a solution by its last token
   (`loss.aggregation=last`, as Cobbe et al.'s verifiers): under causal attention only the
   last token has read every step, so a mean over the response averages in the early
   tokens' guesses (the same trained ORM: held-out AUROC 0.931 by `mean`, 0.986 by `last`;
   the aggregation changes the score, not the training). It learns from one label per
   chain, so it gets more steps than the PRM;
3. reads each run's final evaluation on the held-out chains and prints the figures against
   the targets: PRM step accuracy >= 0.9 and first-error-step accuracy >= 0.8, ORM AUROC >= 0.9.

Everything lands in --work (default runs/prm_demo); report.json holds the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MODEL = ("model.hidden_size=128", "model.num_layers=2",
         "model.num_attention_heads=8", "model.num_query_groups=8", "model.ffn_hidden_size=256",
         "model.max_sequence_length=128")
TRAIN = ("train.global_batch_size=64", "train.micro_batch_size=32", "train.lr=2e-3", "train.min_lr=2e-4",
         "train.log_interval=50", "data.max_length=128", "logging.tensorboard=false")
TARGETS = {"prm": {"step_accuracy": 0.9, "first_error_accuracy": 0.8}, "orm": {"auroc": 0.9}}
SHOWN = {"prm": ("step_accuracy", "first_error_accuracy", "error_step_f1", "auroc", "ece"),
         "orm": ("auroc", "solution_accuracy", "token_accuracy", "ece")}
DATA = {"prm": "steps", "orm": "outcome"}
STEPS = {"prm": 800, "orm": 1600}
EXTRA = {"prm": (), "orm": ("loss.aggregation=last",)}


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(list(args), cwd=REPO, check=True)


def final_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == "eval"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "prm_demo")
    parser.add_argument("--steps", type=int, help=f"optimizer steps of each model (default {STEPS})")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    data = args.work / "data"
    tokenizer = args.work / "tokenizer"
    run(sys.executable, str(HERE / "make_data.py"), "--out-dir", str(data))
    run(sys.executable, str(HERE / "train_tokenizer.py"), "--data-dir", str(data), "--out-dir", str(tokenizer))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    report = {}
    for loss, prefix in DATA.items():
        run_dir = args.work / loss
        steps = args.steps or STEPS[loss]
        began = time.perf_counter()
        run(torchrun, f"--nproc-per-node={args.nproc}", "tools/train_rm.py", f"loss.type={loss}",
            f"model.tokenizer={tokenizer}", *MODEL, *TRAIN, *EXTRA[loss],
            f"train.max_steps={steps}", f"eval.interval={steps}", f"run.dir={run_dir}",
            f"data.train_path={data / f'{prefix}_train.jsonl'}", f"data.eval_path={data / f'{prefix}_eval.jsonl'}")
        report[loss] = {"steps": steps, "seconds": round(time.perf_counter() - began, 1),
                        **{name: final_eval(run_dir)[name] for name in SHOWN[loss]}}
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nheld-out chains, on {args.nproc} processes")
    print(f"{'model':6s} {'metric':22s} {'value':>7s} {'target':>7s}")
    for loss, figures in report.items():
        for name in SHOWN[loss]:
            target = TARGETS[loss].get(name)
            mark = "" if target is None else (" ok" if figures[name] >= target else " BELOW")
            print(f"{loss:6s} {name:22s} {figures[name]:7.3f} {'' if target is None else f'{target:7.2f}'}{mark}")
        print(f"{loss:6s} {'optimizer steps':22s} {figures['steps']:7d}")
        print(f"{loss:6s} {'train + eval seconds':22s} {figures['seconds']:7.1f}")


if __name__ == "__main__":
    main()
