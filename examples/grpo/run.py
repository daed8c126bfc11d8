"""GRPO on the demo, end to end (`make grpo-demo`): a verifiable reward, then the same mixed with
the demo reward model, on 2 CPU processes.

    python examples/grpo/run.py                      # a few minutes on 2 CPU cores
    python examples/grpo/run.py --steps 60 --policy runs/ppo_demo/sft/checkpoints

1. warm-starts a policy by supervised fine-tuning on the demo's chosen responses
   (`tools/train_sft.py`) unless --policy names one;
2. runs GRPO (`tools/train_grpo.py`, conf/train_grpo.yaml plus the settings below) with the
   demo task's rule as the only reward (`examples/grpo/rewards.py:right_count`: 1.0 when a
   response lists exactly the number of items its prompt asks for) and no reward model;
3. runs it again from the same policy with the demo reward model mixed in (`make demo`'s when
   present, else trained here): each source standardised over the step, then summed;
4. judges the responses to held-out prompts (sampled at T=1, the same random draws each time)
   before the first update and after the last by the task's ground truth.

Prints the fraction of right responses before and after each run. Everything lands in --work
(default runs/grpo_demo); report.json holds the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "demo"))
from rl_demo import add_engine_argument, judge, policy, read, reward_model, run, torchrun  # noqa: E402  (the RL demos' shared steps)

RULE = "examples/grpo/rewards.py:right_count"
# On top of conf/train_grpo.yaml: a tiny policy learns at a higher rate than a real one (the
# conf's 1e-6), and short responses keep a step near a second on the CPU. Evaluation samples at
# T=1 with the same draws before and after: the SFT start's greedy answers are already right,
# its sampled ones are not, and RL is what sharpens the sampled distribution.
GRPO_SETTINGS = ("train.prompts_per_step=8", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=40",
                 "train.micro_batch_size=16", "actor.optim.lr=1e-4", "eval.temperature=1.0",
                 "logging.tensorboard=false")
MIXED = ("reward.combine=normalize_then_sum", "reward.weights=[1.0,1.0]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "grpo_demo")
    parser.add_argument("--reward-model", type=Path, help="an existing reward model for the mixed run (default: "
                        "`make demo`'s, runs/demo/checkpoints, when it exists, else the demo's trained here)")
    parser.add_argument("--policy", type=Path, help="an existing policy (default: SFT on the demo's chosen responses)")
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps of each run")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts (examples/demo/data/eval.jsonl)")
    parser.add_argument("--nproc", type=int, default=2)
    add_engine_argument(parser)
    parser.add_argument("--rule-only", action="store_true", help="skip the run with the reward model mixed in")
    parser.add_argument("grpo_overrides", nargs="*", help="more key=value settings for tools/train_grpo.py")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    actor = policy(work, args.policy, args.sft_steps, args.nproc, args.engine)

    runs = {"rule": (f"reward.functions=[{RULE}]",)}
    if not args.rule_only:
        rm = reward_model(work, args.reward_model, args.rm_steps, args.nproc)
        runs["rule + reward model"] = (f"reward.functions=[{RULE}]", f"reward.model={rm}", *MIXED)
    report = {"prompts": args.prompts, "steps": args.steps, "runs": {}}
    for name, rewards in runs.items():
        run_dir = work / name.replace(" + ", "_and_").replace(" ", "_")
        run(*torchrun(args.nproc), "tools/train_grpo.py", f"actor.init={actor}", *rewards, f"run.dir={run_dir}",
            "checkpoint.load=null", f"train.max_steps={args.steps}", f"eval.max_prompts={args.prompts}",
            *GRPO_SETTINGS, f"rollout.engine={args.engine}", *args.grpo_overrides)
        train = [row for row in read(run_dir / "metrics.jsonl") if row["split"] == "train"]
        report["runs"][name] = {"before": judge(read(run_dir / "samples" / "eval_step_0.jsonl")),
                                "after": judge(read(run_dir / "samples" / f"eval_step_{args.steps}.jsonl")),
                                "seconds_per_step": sum(row["generation_s"] + row["scoring_s"] + row["update_s"]
                                                        for row in train) / len(train)}
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.prompts} held-out prompts, responses sampled at T=1 (the same draws), before and after "
          f"{args.steps} GRPO steps; right = exactly the number of items asked for:")
    print(f"  {'reward':24s}{'right before':>14s}{'right after':>13s}{'ended (EOS)':>13s}{'s/step':>8s}")
    for name, figures in report["runs"].items():
        print(f"  {name:24s}{figures['before']['right_fraction']:>14.3f}{figures['after']['right_fraction']:>13.3f}"
              f"{figures['after']['eos_fraction']:>13.3f}{figures['seconds_per_step']:>8.2f}")


if __name__ == "__main__":
    main()
