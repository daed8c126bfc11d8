"""Evaluate a reward model on a preference set: accuracy (ties wrong), margin and calibration
per subset and overall, and RewardBench's section scores and leaderboard average when the
subsets are RewardBench's.

    python tools/eval_rm.py --model runs/demo/checkpoints --input examples/demo/data/eval.jsonl
    torchrun --nproc-per-node 2 tools/eval_rm.py --model ckpt/llama-rm --tp 2 --input rewardbench.parquet \
        --output report.json --plot report.png

Rows are pairs (`prompt`, `chosen`, `rejected`) or rankings (`responses` + `ranking`), with
an optional `subset` field, in any format training reads (.jsonl, .json, .parquet, saved
datasets). Invalid rows stop the run (`--on-invalid skip` counts and leaves them out); rows
too long for the length policy are left out and counted.

--judge evaluates a causal LM (a policy checkpoint or a `*ForCausalLM` folder) as a pairwise
judge (`tools/judge.py`, docs/judge.md) on the same pairs, in the same report: accuracy counts
preference > 0.5, a preference of exactly 0.5 is a tie (wrong, and counted in `ties`), ECE is
the preference's, margin its mean log-odds.

    python tools/eval_rm.py --judge --model hf/Qwen2-0.5B-Instruct --input rewardbench.parquet
"""

import argparse
import json
import os
from pathlib import Path

from megatron_rm.errors import UsageError, exit_on_usage_error
from megatron_rm.judge.arguments import add_judge_arguments, judge_from_arguments
from megatron_rm.judge.evaluation import evaluate_judge_file
from megatron_rm.runtime import parallel
from megatron_rm.scoring.arguments import add_model_arguments, scorer_from_arguments
from megatron_rm.scoring.evaluation import evaluate_file
from megatron_rm.scoring.report import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--judge", action="store_true",
                        help="--model is a causal LM to evaluate as a pairwise judge (options below)")
    add_judge_arguments(parser)
    parser.add_argument("--input", required=True, help="the preference set")
    parser.add_argument("--output", type=Path, help="write the report as JSON here")
    parser.add_argument("--plot", type=Path, help="write a reliability diagram and reward histograms here (.png)")
    parser.add_argument("--on-invalid", choices=("error", "skip"), default="error")
    parser.add_argument("--bins", type=int, default=10, help="confidence bins for calibration")
    parser.add_argument("--chat", action="store_true",
                        help="score a row's plain prompt and response as a user turn and an assistant turn through "
                             "the tokenizer's chat template, as RewardBench's runner does for a model with a template "
                             "(use it to reproduce RewardBench's numbers for a chat model)")
    args = parser.parse_args()

    def run():
        if args.judge:
            return evaluate_judge_file(args.input, judge_from_arguments(args), on_invalid=args.on_invalid,
                                       bins=args.bins)
        if args.template or args.labels:
            raise UsageError("--template and --labels describe a judge: add --judge")
        return evaluate_file(args.input, scorer_from_arguments(args), on_invalid=args.on_invalid, bins=args.bins,
                             chat=args.chat)

    try:
        result = exit_on_usage_error(run, rank=int(os.environ.get("RANK", "0")))
    finally:
        parallel.shutdown()
    if result is None:
        return
    report, counts = result
    print(format_table(report))
    print(f"{counts['evaluated']} of {counts['rows']} rows evaluated; invalid: {_counts(counts['invalid_by_reason'])}; "
          f"dropped: {_counts(counts['dropped'])}")
    if args.output:
        args.output.write_text(json.dumps({"model": args.model, "input": args.input, **counts,
                                           **report.to_dict()}, indent=2) + "\n")
    if args.plot:
        from megatron_rm.scoring.plots import plot_report

        plot_report(report, args.plot)


def _counts(by_reason: dict) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in by_reason.items()) or "none"


if __name__ == "__main__":
    main()
