"""PPO on the demo, end to end (`make ppo-demo`): a reward model drives a policy on 2 CPU processes.

    python examples/ppo/run.py                        # a few minutes on 2 CPU cores
    python examples/ppo/run.py --reward-model runs/demo/checkpoints --steps 60

1. trains the demo reward model (`tools/train_rm.py`) unless --reward-model names one or
   `make demo` has left one in runs/demo;
2. warm-starts a policy by supervised fine-tuning on the demo's chosen responses
   (`tools/train_sft.py`) unless --policy names one;
3. runs PPO (`tools/train_ppo.py`, conf/train_ppo.yaml plus the settings below) on 2 processes,
   the critic starting from the reward model, with an adaptive KL controller;
4. reads the responses to held-out prompts (sampled at T=1, the same random draws each time)
   that PPO scored before its first update and after its last
   (`run.dir/samples/eval_step_<N>.jsonl`) and judges them by the demo task's ground truth,
   which no model sees: a response is right when its list has exactly the number of items the
   prompt asks for.

Prints, before and after PPO, the reward model's mean reward and the fraction of right
responses, and the KL of the last steps against its target. Everything lands in --work
(default runs/ppo_demo); report.json holds the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "demo"))
from rl_demo import add_engine_argument, judge, policy, read, reward_model, run, torchrun  # noqa: E402  (the RL demos' shared steps)

# What PPO runs with on top of conf/train_ppo.yaml: a tiny policy learns at a higher rate than a
# real one (conf's 1e-6), and short responses keep a step near a second on the CPU. Evaluation
# samples at T=1 (the same draws before and after): the SFT start's greedy responses are already
# right, its sampled ones are not, and PPO is what sharpens the sampled distribution.
PPO_SETTINGS = ("train.prompts_per_step=16", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=40",
                "train.micro_batch_size=16", "actor.optim.lr=1e-4", "critic.optim.lr=5e-4",
                "critic.warmup_steps=2", "kl.init_coef=0.2", "kl.target=0.1", "kl.horizon=320",
                "ppo.epochs=2", "ppo.mini_batch_size=32", "eval.temperature=1.0", "logging.tensorboard=false")
LAST_STEPS = 5
"""The KL reported against the target is the mean of this many last steps (one step's is noisy)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ppo_demo")
    parser.add_argument("--reward-model", type=Path, help="an existing reward model (default: `make demo`'s, "
                        "runs/demo/checkpoints, when it exists, else the demo's trained here)")
    parser.add_argument("--policy", type=Path, help="an existing policy (default: SFT on the demo's chosen responses)")
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40, help="PPO steps")
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts (examples/demo/data/eval.jsonl)")
    parser.add_argument("--nproc", type=int, default=2)
    add_engine_argument(parser)
    parser.add_argument("ppo_overrides", nargs="*", help="more key=value settings for tools/train_ppo.py")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rm = reward_model(work, args.reward_model, args.rm_steps, args.nproc)
    actor = policy(work, args.policy, args.sft_steps, args.nproc, args.engine)

    ppo_dir = work / "ppo"
    run(*torchrun(args.nproc), "tools/train_ppo.py", f"actor.init={actor}", f"reward.model={rm}",
        f"run.dir={ppo_dir}", "checkpoint.load=null", f"train.max_steps={args.steps}",
        f"eval.max_prompts={args.prompts}", *PPO_SETTINGS, f"rollout.engine={args.engine}", *args.ppo_overrides)

    before = judge(read(ppo_dir / "samples" / "eval_step_0.jsonl"))
    after = judge(read(ppo_dir / "samples" / f"eval_step_{args.steps}.jsonl"))
    train = [row for row in read(ppo_dir / "metrics.jsonl") if row["split"] == "train"]
    last = train[-LAST_STEPS:]
    report = {"before": before, "after": after, "prompts": args.prompts, "steps": args.steps,
              "kl_last_steps": sum(row["kl"] for row in last) / len(last), "kl_target": _target(ppo_dir),
              "kl_coef": train[-1]["kl_coef_next"], "kl_units": train[-1]["kl_units"]}
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.prompts} held-out prompts, responses sampled at T=1 (the same draws), "
          f"before and after {args.steps} PPO steps:")
    print(f"  {'':28s}{'before (SFT)':>14s}{'after PPO':>12s}")
    print(f"  {'reward model mean reward':28s}{before['reward_mean']:>14.3f}{after['reward_mean']:>12.3f}")
    print(f"  {'right number of items':28s}{before['right_fraction']:>14.3f}{after['right_fraction']:>12.3f}")
    print(f"  {'ended with EOS':28s}{before['eos_fraction']:>14.3f}{after['eos_fraction']:>12.3f}")
    print(f"  KL over the last {len(last)} steps {report['kl_last_steps']:.4f} against a target of "
          f"{report['kl_target']:.4f} ({report['kl_units']}); coefficient {report['kl_coef']:.4f}")


def _target(ppo_dir: Path) -> float:
    import yaml

    return float(yaml.safe_load((ppo_dir / "config.yaml").read_text())["kl"]["target"])


if __name__ == "__main__":
    main()
