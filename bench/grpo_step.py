"""One GRPO step on the CPU: ours (`ppo.step.run_step` with conf/train_grpo.yaml's estimator)
beside TRL's `GRPOTrainer`, on the same policy, prompts, group size, response length and reward.

    .venv/bin/pip install --no-deps --target /tmp/trl trl==1.16.0 accelerate==1.16.0  # on the project's torch
    .venv/bin/python bench/grpo_step.py --trl /tmp/trl               # the demo size and ~100M; ~2 min
    .venv/bin/python bench/grpo_step.py --trl /tmp/trl --sizes demo --steps 1   # a quick check

Builds a random-weight policy of the size (demo = conf/model/tiny.yaml; 100m = the same
architecture at 12 layers, hidden 768, 12 heads, 4 query groups, FFN 3072, bench/ppo_step.py's
~100M shape), saves it and exports it to Hugging Face (`tools/convert_megatron_to_hf.py`'s
export), so both sides start from the same weights. Both sample `--samples-per-prompt`
responses to each of `--prompts-per-step` demo eval prompts (examples/demo/data/eval.jsonl, in
file order) at T=1 up to `--max-new-tokens`, score them with the demo rule
(examples/grpo/rewards.py:right_count), take GRPO advantages (group mean and std), and make one
optimizer step of the token-mean clipped surrogate over all of them, fp32, no reference model
(ours `kl.placement=none`, TRL `beta=0`), the update's forward and backward over all the
responses as one batch (ours `--micro-batch-size` 32, TRL `per_device_train_batch_size`),
`--threads` torch threads each.

Ours runs in this process (a one-rank job, TP1); TRL in its own (bench/grpo_reference.py, with
--trl on its path). `--warmup` untimed steps, then `--steps` timed ones. Per phase, seconds
per step:
- generation: ours `generation_s` (megatron's KV cache); TRL `_generate` (transformers' `generate`);
- scoring: ours `scoring_s` (the rule, old log-probs, advantages); TRL the rest of
  `_generate_and_score_completions` (the rule, advantages; with one update per generation it
  computes no old log-probs: its ratio is taken against a detached copy of the new ones);
- update: the rest of the step (ours: the actor's forward, backward and optimizer step).
Tokens/s counts prompt + response tokens per step for every row but generation's (new tokens).
A random policy rarely samples EOS, so nearly every response runs to --max-new-tokens on both
sides. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from ppo_step import PROMPTS, REPO, run_sizes, step_arguments, timed_steps

from megatron_rm.config import POLICY, ModelConfig
from megatron_rm.convert.megatron_to_hf import export_hf
from megatron_rm.core import checkpoint
from megatron_rm.core.optim import SkipGuard
from megatron_rm.data import load_tokenizer
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.ppo.config import PPOConfig, validate_ppo
from megatron_rm.ppo.kl import kl_controller
from megatron_rm.ppo.models import PPOModels
from megatron_rm.ppo.trainer import build_context
from megatron_rm.reward_functions.function import RewardFunction

RULE = f"{REPO / 'examples' / 'grpo' / 'rewards.py'}:right_count"
LR = 1e-5


def grpo_config(args) -> PPOConfig:
    cfg = PPOConfig()
    cfg.actor.init, cfg.reward.functions = "random weights", [RULE]
    cfg.algorithm.advantage = "grpo"
    cfg.kl.placement, cfg.kl.type = "none", "fixed"
    cfg.actor.optim.lr = LR
    cfg.train.max_steps = args.warmup + args.steps
    cfg.train.prompts_per_step, cfg.train.micro_batch_size = args.prompts_per_step, args.micro_batch_size
    cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens = args.samples_per_prompt, args.max_new_tokens
    cfg.rollout.batch_size = args.prompts_per_step * args.samples_per_prompt
    cfg.rollout.engine = args.engine
    validate_ppo(cfg, 1, cuda=False)
    return cfg


def ours(name: str, config: ModelConfig, args, layout, work: Path) -> tuple[list[dict], Path, int]:
    """Our timed steps, the exported policy (the weights before the first step) and its size."""
    tokenizer = load_tokenizer(config.tokenizer)
    cfg = grpo_config(args)
    actor = build_trainable(POLICY, config, cfg.parallel, len(tokenizer), cfg.actor.optim, cfg.train.max_steps,
                            precision="fp32")
    saved = checkpoint.save(work / "megatron", 0, {"actor": actor.state}, tokenizer=tokenizer)
    exported = export_hf(saved, work / "hf", model_name="actor", kind="policy")
    models = PPOModels(actor, None, None, None, layout, tokenizer)
    ctx = build_context(cfg, models, [RewardFunction.load(RULE)], kl_controller("fixed", 0.0),
                        {"actor": SkipGuard(cfg.train.max_skipped)}, (tokenizer.eos_token_id,))
    timed = timed_steps(ctx, config, tokenizer, args.warmup)
    parameters = sum(p.numel() for p in actor.module.parameters())
    return timed, exported, parameters


def reference(exported: Path, args, work: Path) -> dict:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    spec = {"model": str(exported), "prompts": [row["prompt"] for row in rows],
            "prompts_per_step": args.prompts_per_step, "samples_per_prompt": args.samples_per_prompt,
            "max_new_tokens": args.max_new_tokens, "steps": args.steps, "warmup": args.warmup, "lr": LR,
            "threads": torch.get_num_threads()}
    (work / "spec.json").write_text(json.dumps(spec))
    # Not this process's process-group variables: accelerate would join its rendezvous.
    distributed = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    env = {**{k: v for k, v in os.environ.items() if k not in distributed},
           "PYTHONPATH": os.pathsep.join(filter(None, [args.trl, str(REPO)])), "OMP_NUM_THREADS": str(spec["threads"])}
    subprocess.run([sys.executable, str(REPO / "bench" / "grpo_reference.py"), str(work / "spec.json"),
                    str(work / "result.json")], check=True, env=env)
    return json.loads((work / "result.json").read_text())


def bench(name: str, config: ModelConfig, args, layout) -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mine, exported, parameters = ours(name, config, args, layout, work)
        theirs = reference(exported, args, work)["steps"][args.warmup:]

    def mean(rows, key):
        return sum(row[key] for row in rows) / len(rows)

    # Ours: tokens as run_step counts them; TRL: what its _generate returned.
    documents_ours, new_ours = mean(mine, "document_tokens"), mean(mine, "new_tokens")
    new_trl = mean(theirs, "completion_tokens")
    documents_trl = new_trl + mean(theirs, "prompt_tokens")
    ours_s = {"generation": mean(mine, "generation_s"), "scoring": mean(mine, "scoring_s"),
              "update": mean(mine, "update_s"), "whole step": mean(mine, "step_s")}
    trl_s = {"generation": mean(theirs, "generation_s"),
             "scoring": mean(theirs, "generate_and_score_s") - mean(theirs, "generation_s"),
             "update": mean(theirs, "step_s") - mean(theirs, "generate_and_score_s"),
             "whole step": mean(theirs, "step_s")}
    print(f"\n{name}: policy of {parameters:,} parameters ({config.num_layers} layers x hidden {config.hidden_size}), "
          f"{args.prompts_per_step} prompts x {args.samples_per_prompt} samples, max_new_tokens "
          f"{args.max_new_tokens} (mean response {mean(mine, 'response_length_mean'):.1f} tokens ours, "
          f"{new_trl / (args.prompts_per_step * args.samples_per_prompt):.1f} TRL), "
          f"{torch.get_num_threads()} torch threads; {len(mine)} timed step(s) after {args.warmup} untimed\n")
    print("| phase | ours s/step | TRL s/step | ours tokens/s | TRL tokens/s | ours / TRL |\n"
          "|---|---:|---:|---:|---:|---:|")
    for phase in ours_s:
        tokens_ours, tokens_trl = (new_ours, new_trl) if phase == "generation" else (documents_ours, documents_trl)
        rate_ours, rate_trl = tokens_ours / ours_s[phase], tokens_trl / trl_s[phase]
        print(f"| {phase} | {ours_s[phase]:.2f} | {trl_s[phase]:.2f} | {rate_ours:,.0f} | {rate_trl:,.0f} | "
              f"{rate_ours / rate_trl:.2f}x |")


def main() -> None:
    # One micro-batch of all 32 responses: TRL's update takes them as one batch too.
    parser = step_arguments(__doc__, prompts_per_step=4, samples_per_prompt=8, steps=2, micro_batch_size=32)
    parser.add_argument("--trl", help="a folder holding trl and accelerate (pip install --target), put on the "
                        "reference's path; default: the environment's own")
    run_sizes(parser, parser.parse_args(), bench)


if __name__ == "__main__":
    main()
