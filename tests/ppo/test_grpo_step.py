"""A step of every advantage estimator and KL placement through `run_step` on real tiny models
in this process (a one-rank job): the first update's ratio is exactly 1, a critic exists only
for `gae`, the reference only when the KL is read; and GRPO on a rule reward learns."""

from __future__ import annotations

import pytest
import torch

from megatron_rm.config import POLICY, REWARD
from megatron_rm.core.optim import SkipGuard
from megatron_rm.data import load_tokenizer
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.ppo.config import PPOConfig, validate_ppo
from megatron_rm.ppo.kl import kl_controller
from megatron_rm.ppo.models import PPOModels
from megatron_rm.ppo.prompts import PromptSampler, load_prompts
from megatron_rm.ppo.reference import CpuReference
from megatron_rm.ppo.step import run_step, update_rows
from megatron_rm.ppo.trainer import build_context
from megatron_rm.reward_functions.function import RewardFunction
from tests.conftest import DEMO, tiny_model_config

# The reward: 1.0 for a response that mentions a fruit the demo's vocabulary knows.
REWARD_SOURCE = """
FRUITS = ("apple", "mango", "grape", "cherry", "peach", "fig", "plum", "lime")

def fruit(prompts, completions, **columns):
    return [float(any(f in c for f in FRUITS)) for c in completions]
"""


def _config(tmp_path, **changes) -> PPOConfig:
    (tmp_path / "fruit.py").write_text(REWARD_SOURCE)
    cfg = PPOConfig()
    cfg.actor.init, cfg.reward.functions = "random weights", [f"{tmp_path / 'fruit.py'}:fruit"]
    cfg.train.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens = 4, 4, 6
    cfg.train.micro_batch_size, cfg.ppo.mini_batch_size, cfg.ppo.epochs = 4, 8, 2
    cfg.kl.type = "fixed"
    for key, value in changes.items():
        group, name = key.split("__")
        setattr(getattr(cfg, group), name, value)
    validate_ppo(cfg, 1, cuda=False)
    return cfg


def _context(cfg: PPOConfig, layout, *, stop_every: int = 0):
    """The run's `Context` around a random tiny actor and, for `gae`, a random critic. With
    `stop_every`, every token id divisible by it also ends a response (as a chat model's end of
    turn does), so that a random policy's responses end within a few tokens."""
    torch.manual_seed(5)
    config = tiny_model_config()
    tokenizer = load_tokenizer(config.tokenizer)
    actor = build_trainable(POLICY, config, cfg.parallel, len(tokenizer), cfg.actor.optim, 50, precision="fp32")
    stops = (tokenizer.eos_token_id, *(range(stop_every, len(tokenizer), stop_every) if stop_every else ()))
    critic = (build_trainable(REWARD, config, cfg.parallel, len(tokenizer), cfg.critic.optim, 50, precision="fp32")
              if cfg.needs_critic else None)
    reference = CpuReference(actor.module) if cfg.needs_reference else None
    models = PPOModels(actor, critic, reference, None, layout, tokenizer)
    guards = {"actor": SkipGuard(0), "critic": SkipGuard(0)}
    functions = [RewardFunction.load(spec) for spec in cfg.reward.functions]
    ctx = build_context(cfg, models, functions, kl_controller(cfg.kl.type, cfg.kl.init_coef), guards, stops)
    prompts = load_prompts(DEMO / "data" / "eval.jsonl", tokenizer, room=64, prompt_policy="error",
                           on_invalid="error", max_new_tokens=cfg.rollout.max_new_tokens,
                           max_sequence_length=config.max_sequence_length, limit=40)
    return ctx, prompts, PromptSampler(len(prompts), cfg.train.prompts_per_step, cfg.train.seed)


@pytest.mark.parametrize("advantage, placement", [
    ("gae", "reward"), ("grpo", "loss"), ("grpo", "none"), ("rloo", "reward"), ("reinforce_pp", "reward"),
    ("reinforce_pp_baseline", "loss"),
])
def test_every_estimator_runs_a_step_with_ratio_one_first(tmp_path, single_rank, advantage, placement):
    cfg = _config(tmp_path, algorithm__advantage=advantage, kl__placement=placement, kl__init_coef=0.05,
                  reward__model="random weights" if advantage == "gae" else None, ppo__entropy_coef=0.01)
    ctx, prompts, sampler = _context(cfg, single_rank, stop_every=8)
    assert (ctx.models.critic is not None) == (advantage == "gae")
    assert (ctx.models.reference is not None) == (placement != "none")
    metrics = run_step(ctx, 1, prompts, sampler)
    assert metrics["first_clip_fraction"] == 0.0 and metrics["first_approx_kl"] == 0.0
    assert metrics["responses"] == 16 and sampler.cursor == 4
    assert ("value_loss" in metrics) == (advantage == "gae")
    assert (metrics["kl"] is None) == (placement == "none") and ("kl_loss" in metrics) == (placement == "loss")
    assert metrics["policy_tokens"] > 0 and metrics["actor_grad_norm"] > 0


def test_grpo_on_a_rule_reward_learns(tmp_path, single_rank):
    """A random policy whose responses end within a few tokens, rewarded for naming a fruit: GRPO
    raises the step's mean reward well above where it started."""
    cfg = _config(tmp_path, algorithm__advantage="grpo", kl__placement="none", train__prompts_per_step=8,
                  rollout__samples_per_prompt=8, ppo__mini_batch_size=0, ppo__epochs=1, train__micro_batch_size=16)
    cfg.actor.optim.lr = 1e-2
    ctx, prompts, sampler = _context(cfg, single_rank, stop_every=8)
    rewards = [run_step(ctx, step, prompts, sampler)["reward_mean"] for step in range(1, 31)]
    before, after = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert before < 0.15 and after > before + 0.4, rewards  # measured: 0.06 -> 0.76


def test_each_mini_batch_holds_the_same_responses_at_any_data_parallel_size():
    from types import SimpleNamespace

    order = torch.randperm(24, generator=torch.Generator().manual_seed(0)).tolist()
    for dp in (1, 2, 4):
        shares = [update_rows(order, 8, SimpleNamespace(dp=dp, dp_rank=rank)) for rank in range(dp)]
        for k in range(3):  # mini-batch k: each replica's k-th share of 8 // dp responses
            held = sorted(i for share in shares for i in share[k * 8 // dp:(k + 1) * 8 // dp])
            assert held == sorted(order[k * 8:(k + 1) * 8])
