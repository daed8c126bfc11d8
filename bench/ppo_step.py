"""Where a PPO step's time goes on CPU: generation, scoring and the update, for the demo model and a ~100M one.

    .venv/bin/python bench/ppo_step.py                              # both sizes
    .venv/bin/python bench/ppo_step.py --sizes demo --steps 1       # a quick check

Builds, in this one process (a one-rank job, TP1, fp32), an actor (a policy) and a critic and a
reward model (reward models of the same shape) with random weights, the reference as the
actor's weights in CPU memory (`CpuReference`), and runs `ppo.step.run_step` as a PPO run
does (`ppo.trainer` builds the same `Context`), on the demo's eval prompts
(examples/demo/data/eval.jsonl, demo tokenizer) drawn as the run's prompt sampler draws them.
Sizes: demo = conf/model/tiny.yaml; 100m = the same architecture at 12 layers, hidden 768, 12
heads, 4 query groups, FFN 3072, 512 positions (bench/train_throughput.py's ~100M shape; with
the demo's 327-token vocabulary nearly every parameter is in the layers).

`--warmup` untimed steps, then `--steps` timed ones; per phase, the seconds `run_step` measures,
averaged over the timed steps:
- generation: sampling the responses (KV cache; tokens/s counts new tokens);
- scoring: old and reference log-probs (the reference weights copied into the actor and back),
  critic values, reward-model scores and the experience (advantages, returns);
- update: one critic and one actor optimizer step per mini-batch (one mini-batch: all of the
  step's responses), ppo.epochs = 1;
- weights into the engine: the actor's weights loaded into the rollout engine after the update
  (`--engine`: megatron, nothing to copy; vllm, the weight stream to vLLM);
- whole step: `run_step`'s wall clock (the phases plus its metrics).
Scoring, update and whole-step tokens/s count document tokens (prompt + response, as
`run_step` reports them). A random-weight policy rarely samples EOS, so nearly every response
runs to `--max-new-tokens`: the worst case for generation.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import yaml

from megatron_rm.config import POLICY, REWARD, ModelConfig, ParallelConfig
from megatron_rm.core.optim import SkipGuard
from megatron_rm.data import load_tokenizer
from megatron_rm.generation.engine import ENGINES
from megatron_rm.generation.engines import engine_problems
from megatron_rm.loading.reward import ScoringModel
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.model.factory import build_reward_model
from megatron_rm.ppo.config import PPOConfig, validate_ppo
from megatron_rm.ppo.context import Context
from megatron_rm.ppo.kl import kl_controller
from megatron_rm.ppo.models import PPOModels
from megatron_rm.ppo.prompts import PromptSampler, load_prompts
from megatron_rm.ppo.reference import CpuReference
from megatron_rm.ppo.step import run_step
from megatron_rm.ppo.trainer import build_context
from megatron_rm.runtime import parallel

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "examples" / "demo" / "data" / "eval.jsonl"


def model_configs() -> dict[str, ModelConfig]:
    fields = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    demo = ModelConfig(**{**fields, "tokenizer": str(REPO / fields["tokenizer"])})
    return {"demo": demo, "100m": dataclasses.replace(demo, num_layers=12, hidden_size=768, num_attention_heads=12,
                                                       num_query_groups=4, ffn_hidden_size=3072,
                                                       max_sequence_length=512)}


def ppo_config(args, micro_batch_size: int) -> PPOConfig:
    # The models are built here, not found: the paths only satisfy the checks of the flags.
    cfg = PPOConfig()
    cfg.actor.init = cfg.reward.model = "random weights"
    cfg.train.max_steps = args.warmup + args.steps
    cfg.train.prompts_per_step, cfg.train.micro_batch_size = args.prompts_per_step, micro_batch_size
    cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens = args.samples_per_prompt, args.max_new_tokens
    cfg.rollout.engine = args.engine
    validate_ppo(cfg, 1, cuda=False)
    return cfg


def context(cfg: PPOConfig, config: ModelConfig, tokenizer, layout) -> Context:
    """The run's `Context` (`ppo.trainer.build_context`) around random-weight models of `config`."""
    vocab, updates = len(tokenizer), cfg.train.max_steps * cfg.ppo.epochs
    actor = build_trainable(POLICY, config, cfg.parallel, vocab, cfg.actor.optim, updates, precision="fp32")
    reference = CpuReference(actor.module)
    critic = build_trainable(REWARD, config, cfg.parallel, vocab, cfg.critic.optim, updates, precision="fp32")
    reward = ScoringModel([build_reward_model(config, cfg.parallel, vocab).eval()], config, tokenizer, layout,
                          normalization=None, name="random reward model")
    models = PPOModels(actor, critic, reference, reward, layout, tokenizer)
    controller = kl_controller(cfg.kl.type, cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
    guards = {name: SkipGuard(cfg.train.max_skipped) for name in ("actor", "critic")}
    return build_context(cfg, models, [], controller, guards, (tokenizer.eos_token_id,))


def timed_steps(ctx: Context, config: ModelConfig, tokenizer, warmup: int) -> list[dict]:
    """`run_step`'s metrics and wall clock (`step_s`) for each of the run's steps after `warmup`,
    on the demo's eval prompts drawn as a run draws them."""
    cfg = ctx.cfg
    prompts = load_prompts(PROMPTS, tokenizer, room=config.max_sequence_length - cfg.rollout.max_new_tokens,
                           prompt_policy="error", on_invalid="error", max_new_tokens=cfg.rollout.max_new_tokens,
                           max_sequence_length=config.max_sequence_length)
    sampler = PromptSampler(len(prompts), cfg.train.prompts_per_step, cfg.train.seed)
    timed = []
    try:
        for step in range(1, cfg.train.max_steps + 1):
            began = time.perf_counter()
            metrics = run_step(ctx, step, prompts, sampler)
            if step > warmup:
                timed.append({**metrics, "step_s": time.perf_counter() - began})
    finally:
        ctx.engine.close()
    return timed


def bench(name: str, config: ModelConfig, args, layout) -> None:
    tokenizer = load_tokenizer(config.tokenizer)
    responses = args.prompts_per_step * args.samples_per_prompt
    cfg = ppo_config(args, args.micro_batch_size)
    ctx = context(cfg, config, tokenizer, layout)
    timed = timed_steps(ctx, config, tokenizer, args.warmup)

    def mean(key: str) -> float:
        return sum(m[key] for m in timed) / len(timed)

    new_tokens, documents = mean("new_tokens"), mean("document_tokens")
    step_s = mean("step_s")
    rows = [("generation", mean("generation_s"), new_tokens),
            ("scoring (log-probs, values, rewards)", mean("scoring_s"), documents),
            ("update (critic + actor)", mean("update_s"), documents * cfg.ppo.epochs),
            ("weights into the engine", mean("weights_s"), None),
            ("whole step", step_s, documents)]
    parameters = sum(p.numel() for p in ctx.models.actor.module.parameters())
    print(f"\n{name}: policy of {parameters:,} parameters ({config.num_layers} layers x hidden "
          f"{config.hidden_size}), {responses} responses per step ({args.prompts_per_step} prompts x "
          f"{args.samples_per_prompt}), max_new_tokens {args.max_new_tokens} (mean response "
          f"{mean('response_length_mean'):.1f} tokens), micro-batch {cfg.micro_batch_size(1)}, "
          f"{torch.get_num_threads()} torch threads; {len(timed)} timed step(s) after {args.warmup} untimed\n")
    print("| phase | seconds per step | share of step | tokens/s |\n|---|---:|---:|---:|")
    for label, seconds, tokens in rows:
        rate = "-" if tokens is None else f"{tokens / seconds:.1f}"
        print(f"| {label} | {seconds:.2f} | {100 * seconds / step_s:.0f}% | {rate} |")


def step_arguments(doc: str, *, prompts_per_step: int, samples_per_prompt: int, steps: int,
                   micro_batch_size: int = 8) -> argparse.ArgumentParser:
    """The flags of an RL step benchmark (this one and bench/grpo_step.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="demo,100m", help="comma-separated: demo, 100m")
    parser.add_argument("--prompts-per-step", type=int, default=prompts_per_step)
    parser.add_argument("--samples-per-prompt", type=int, default=samples_per_prompt)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=micro_batch_size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--engine", choices=ENGINES, default="megatron", help="rollout.engine")
    return parser


def run_sizes(parser: argparse.ArgumentParser, args, bench) -> None:
    """`bench(name, config, args, layout)` for each of --sizes, in a one-rank job."""
    configs = model_configs()
    sizes = args.sizes.split(",")
    if set(sizes) - set(configs):
        parser.error(f"--sizes takes {', '.join(configs)}, not {', '.join(sorted(set(sizes) - set(configs)))}")
    for name in sizes:
        problems = engine_problems(args.engine, configs[name], cuda=False, key="--engine")
        if problems:
            parser.error(f"--sizes {name}: " + "; ".join(problems))
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = parallel.initialize(ParallelConfig(), seed=1234)
    try:
        for name in sizes:
            bench(name, configs[name], args, layout)
    finally:
        parallel.shutdown()


def main() -> None:
    parser = step_arguments(__doc__, prompts_per_step=8, samples_per_prompt=4, steps=3)
    run_sizes(parser, parser.parse_args(), bench)


if __name__ == "__main__":
    main()
