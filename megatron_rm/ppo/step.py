"""One step on this rank: sample and score (`sampling`), build the experience, update the critic
and the actor.

Every rank holds the step's responses and rewards (`sampling.sample_step`), and the step is
laid out as training lays out a global batch: one order of all the step's responses (seeded by the step) cut into
mini-batches of `ppo.mini_batch_size`, each split evenly over the replicas and cut into
micro-batches. So each mini-batch holds the same responses at any data-parallel size, and so
does each update. The rollout forwards run on exactly those micro-batches, in the order the
first update pass takes them, so the first mini-batch's ratio is exactly 1. Later epochs visit
the mini-batches in a fresh order (the tensors, and so each response's old log-probabilities,
never change shape).
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.config import POLICY
from megatron_rm.convert.weight_stream import hf_weights
from megatron_rm.core.optim import train_step
from megatron_rm.generation.generator import EOS
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.ppo.context import Context
from megatron_rm.ppo.estimators import AdvantageSettings
from megatron_rm.ppo.experience import Shaping, engine_logprobs, experience
from megatron_rm.ppo.forwards import RolloutModels, rollout_forwards
from megatron_rm.ppo.losses import PolicyLossSettings
from megatron_rm.ppo.models import in_eval_mode
from megatron_rm.ppo.objectives import ActorObjective, CriticObjective, Rollouts
from megatron_rm.ppo.prompts import PromptSampler, PromptSet
from megatron_rm.ppo.sampling import micro_batches, sample_step
from megatron_rm.runtime.parallel import Layout
from megatron_rm.runtime.sums import all_reduce_sums, moments


def update_rows(order: list[int], mini_batch_size: int, layout: Layout) -> list[int]:
    """This replica's responses of a step whose responses are `order`: its share of each
    mini-batch (consecutive `mini_batch_size` responses of `order`), mini-batch after mini-batch."""
    share = mini_batch_size // layout.dp
    return [i for start in range(0, len(order), mini_batch_size)
            for i in order[start + layout.dp_rank * share:start + (layout.dp_rank + 1) * share]]


def run_step(ctx: Context, step: int, prompt_set: PromptSet, sampler: PromptSampler) -> dict:
    """Step `step` (1-based) on `prompt_set`'s prompts from `sampler`'s cursor on; the step's
    metrics, the same on every rank. The KL controller is updated at the end (not during critic
    warm-up), and the sampler's cursor once the step is done."""
    cfg, layout, models = ctx.cfg, ctx.layout, ctx.models
    actor_chunks = [models.actor.ddp]
    critic_chunks = [models.critic.ddp] if models.critic is not None else None
    got = sample_step(ctx, prompt_set, sampler, version=step - 1)
    ctx.engine.release()  # its memory, for the forwards and the update (a no-op on the CPU)

    began = time.perf_counter()
    prompts = [prompt_set.ids[index] for index in got.prompts]
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    order = torch.randperm(len(prompts), generator=shuffle).tolist()
    batches, ended, rows = micro_batches(ctx, prompts, got.completions,
                                         update_rows(order, cfg.mini_batch_size(), layout))
    groups = [torch.tensor([got.groups[i] for i in chosen]) for chosen in rows]
    combined = [got.rewards["combined"][chosen].to(runtime.device()) for chosen in rows]
    one_update = cfg.ppo.epochs == 1 and cfg.mini_batch_size() == cfg.responses_per_step()
    rollout_models = RolloutModels(actor_chunks, critic_chunks, models.reference, layout, ctx.vocab_size,
                                   cfg.rollout.temperature,
                                   old_logprobs=not (one_update and cfg.kl.placement != "reward"))
    shaping = Shaping(clip=cfg.reward.clip, no_eos=cfg.rollout.no_eos, no_eos_penalty=cfg.rollout.no_eos_penalty,
                      max_new_tokens=cfg.rollout.max_new_tokens, overlong_buffer=cfg.reward.overlong_buffer,
                      overlong_penalty=cfg.reward.overlong_penalty)
    with in_eval_mode(actor_chunks + (critic_chunks or [])):
        parts = rollout_forwards(rollout_models, batches, ended, combined, shaping, groups)
    kl_coef = ctx.controller.value
    result = experience(parts, advantage_settings(cfg, kl_coef), advantage=cfg.algorithm.advantage,
                        kl_estimator=cfg.kl.estimator, kl_in_loss=cfg.kl.placement == "loss",
                        dp_group=layout.groups.dp)
    for rollout, chosen in zip(result.rollouts, rows):
        rollout.engine_logprobs = engine_logprobs(rollout.batch, [got.completions[i] for i in chosen]).to(
            runtime.device())
    forwards_s = time.perf_counter() - began

    began = time.perf_counter()
    train_actor = step > cfg.critic.warmup_steps
    updates = update(ctx, result.rollouts, step, train_actor, kl_coef)
    update_s = time.perf_counter() - began
    began = time.perf_counter()
    load_actor_weights(ctx, step)
    weights_s = time.perf_counter() - began
    sampler.cursor = got.cursor

    kl = _moments(result.kl, layout) if result.kl is not None else {"mean": math.nan}
    if train_actor and cfg.kl.placement == "reward":
        ctx.controller.update(kl["mean"], n_steps=cfg.responses_per_step())
    # Every rank holds the whole step's responses and rewards: their statistics need no reduction.
    lengths = torch.tensor([float(len(c.token_ids)) for c in got.completions], dtype=torch.float64)
    tokens = torch.tensor([float(sum(b.tokens for b in batches))], dtype=torch.float64, device=runtime.device())
    document_tokens = float(all_reduce_sums(tokens, layout.groups.dp)[0])
    raw, reward = _statistics(got.rewards["raw"]), _statistics(got.rewards["combined"])
    sources = {}
    if len(ctx.rewards.names) > 1 or ctx.rewards.functions:
        sources = {f"reward_{name}": _statistics(got.rewards[name])["mean"] for name in ctx.rewards.names}
    scoring_s = got.scoring_s + forwards_s
    return _finite({
        "reward_raw_mean": raw["mean"], "reward_raw_std": raw["std"],
        "reward_mean": reward["mean"], "reward_std": reward["std"], **sources,
        **({"unscored_fraction": float(torch.isnan(got.rewards["combined"]).double().mean())}
           if ctx.rewards.functions else {}),
        **({"sampling_rounds": got.rounds, "dropped_groups": got.dropped_groups}
           if cfg.rollout.dynamic_sampling else {}),
        "kl": kl["mean"], "kl_coef": kl_coef if cfg.kl.placement != "none" else None,
        "kl_coef_next": ctx.controller.value if cfg.kl.placement != "none" else None,
        **updates, **({"explained_variance": _explained_variance(result.rollouts, layout)} if critic_chunks else {}),
        "response_length_mean": float(lengths.mean()), "response_length_max": float(lengths.max()),
        "eos_fraction": sum(c.finish_reason == EOS for c in got.completions) / len(got.completions),
        "responses": len(got.completions), "actor_trained": train_actor,
        "new_tokens": got.generated_tokens, "document_tokens": int(document_tokens),
        "generation_s": got.generation_s, "scoring_s": scoring_s, "update_s": update_s, "weights_s": weights_s,
        "generation_tokens_per_s": got.generated_tokens / got.generation_s,
        "scoring_tokens_per_s": document_tokens / scoring_s,
        "update_tokens_per_s": document_tokens * cfg.ppo.epochs / update_s,
    })


def load_actor_weights(ctx: Context, version: int) -> None:
    """The actor's weights into the rollout engine as `version` (nothing is copied for the
    megatron engine, which samples from the actor itself)."""
    models = ctx.models
    ctx.engine.resume()
    ctx.engine.load_weights(hf_weights([models.actor.ddp], ctx.layout, models.actor.state.config, POLICY,
                                       ctx.vocab_size), version)


def _statistics(values: torch.Tensor) -> dict:
    """Mean and population std of the responses that have a reward (a function's None is NaN)."""
    values = values[~torch.isnan(values)].double()
    if not len(values):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False))}


def advantage_settings(cfg: PPOConfig, kl_coef: float) -> AdvantageSettings:
    return AdvantageSettings(kl_coef=kl_coef if cfg.kl.placement == "reward" else 0.0, gamma=cfg.ppo.gamma,
                             lam=cfg.ppo.lam, group_scale=cfg.algorithm.group_scale, std_eps=cfg.algorithm.std_eps)


def policy_settings(cfg: PPOConfig, kl_coef: float) -> PolicyLossSettings:
    p = cfg.ppo
    return PolicyLossSettings(kind=p.policy_loss, clip=p.clip, clip_high=p.clip_high, dual_clip=p.dual_clip,
                              entropy_coef=p.entropy_coef, aggregation=p.loss_agg,
                              norm=p.loss_norm_tokens or cfg.rollout.max_new_tokens,
                              kl_coef=kl_coef if cfg.kl.placement == "loss" else 0.0, kl_estimator=cfg.kl.estimator)


def update(ctx: Context, rollouts: list[Rollouts], step: int, train_actor: bool, kl_coef: float = 0.0) -> dict:
    """`ppo.epochs` passes of mini-batches over the step's micro-batches: the critic (when the
    estimator has one), then (after its warm-up) the actor, one optimizer step each per
    mini-batch. The losses and token means of the statistics over every update, and the first
    mini-batch's actor statistics."""
    cfg, layout, models = ctx.cfg, ctx.layout, ctx.models
    per_update = cfg.mini_batch_size() // layout.dp // cfg.micro_batch_size(layout.dp)
    actor = ActorObjective(ctx.vocab_size, cfg.rollout.temperature, policy_settings(cfg, kl_coef), engine=True,
                           is_cap=cfg.rollout.is_cap if cfg.rollout.is_correction else None)
    critic = CriticObjective(cfg.ppo.value_clip)
    sums = {"actor": None, "critic": None}
    norms = {"actor": [], "critic": []}
    first = None
    mini_batches = [rollouts[start:start + per_update] for start in range(0, len(rollouts), per_update)]
    for epoch in range(cfg.ppo.epochs):
        order = list(range(len(mini_batches)))
        if epoch:  # the same on every rank: each mini-batch's micro-batches are on its every replica
            shuffle = torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + step) * 101 + epoch)
            order = torch.randperm(len(mini_batches), generator=shuffle).tolist()
        for chosen in (mini_batches[i] for i in order):
            jobs = []
            if models.critic is not None:
                jobs.append(("critic", models.critic, critic, cfg.critic.optim.clip_grad))
            if train_actor:
                jobs.append(("actor", models.actor, actor, cfg.actor.optim.clip_grad))
            for name, model, objective, clip in jobs:
                result = train_step(model.ddp, model.optimizer, model.scheduler, objective, chosen, clip, layout)
                ctx.guards[name].record(step, result)
                sums[name] = result.sums if sums[name] is None else sums[name] + result.sums
                norms[name].append(result.grad_norm)
                if name == "actor" and first is None:
                    first = actor.summarize(result.sums)
    metrics = {"actor_lr": models.actor.optimizer.param_groups[0]["lr"]}
    if models.critic is not None:
        value = critic.summarize(sums["critic"])
        metrics.update(critic_lr=models.critic.optimizer.param_groups[0]["lr"], value_loss=value["loss"],
                       value_clip_fraction=value["clipped"],
                       critic_grad_norm=sum(norms["critic"]) / len(norms["critic"]))
    if sums["actor"] is not None:
        policy = actor.summarize(sums["actor"])
        metrics.update(policy_loss=policy["loss"], clip_fraction=policy["clipped"], approx_kl=policy["approx_kl"],
                       entropy=policy.get("entropy"), policy_tokens=policy["tokens"],
                       actor_grad_norm=sum(norms["actor"]) / len(norms["actor"]),
                       first_clip_fraction=first["clipped"], first_approx_kl=first["approx_kl"],
                       engine_logprob_abs_diff=policy["engine_abs_diff"], engine_logprob_k3=policy["engine_k3"],
                       **({"is_weight": policy["is_weight"]} if "is_weight" in policy else {}))
        if "kl_loss" in policy:
            metrics["kl_loss"] = policy["kl_loss"]
    return metrics


def _finite(metrics: dict) -> dict:
    """None for a statistic with nothing to average (no response the policy loss may learn from,
    returns without variance): JSON has no NaN."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in metrics.items()}


def _moments(x: torch.Tensor, layout) -> dict:
    """Count, mean, population std and max of `x` over every data-parallel replica."""
    x = x.double().to(runtime.device())
    summed = moments([x], layout.groups.dp)
    largest = torch.tensor([float(x.max()) if x.numel() else -float("inf")], device=runtime.device())
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=layout.groups.dp)
    return {"count": summed.count, "mean": summed.mean, "std": summed.variance ** 0.5 if summed.count else 0.0,
            "max": float(largest)}


def _explained_variance(rollouts: list[Rollouts], layout) -> float:
    """1 - Var(returns - values) / Var(returns) over every action token of the step: how much of
    the returns the critic's values (before the update) explained."""
    parts = []
    for r in rollouts:
        _, mask = next_token_targets(r.batch)
        mask = mask.to(r.returns.device)
        parts.append((r.returns[mask], (r.returns - r.old_values)[mask]))
    returns = _moments(torch.cat([p[0] for p in parts]), layout)
    errors = _moments(torch.cat([p[1] for p in parts]), layout)
    return 1.0 - errors["std"] ** 2 / returns["std"] ** 2 if returns["std"] > 0 else float("nan")
