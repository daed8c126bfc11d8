"""One PPO step on this rank: sample, score, build the experience, update the critic and the actor.

The step's prompts are split evenly over the data-parallel replicas; a response draws from
(train.seed, its number in the whole run), so the step's responses are the same at any layout.
A replica's responses are shuffled (seeded by the step) into micro-batches once, and the
rollout forwards run on exactly those micro-batches, in the order the first update pass takes
them, so the first mini-batch's ratio is exactly 1. Later epochs visit the micro-batches in a
fresh order (shuffled mini-batches of whole micro-batches: the tensors, and so each response's
old log-probabilities, never change shape).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.core.optim import SkipGuard, train_step
from megatron_rm.data import Batch, pad_id
from megatron_rm.generation.generator import Completion, Generator, generate_batched, response_text
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.ppo.estimators import AdvantageSettings
from megatron_rm.ppo.experience import Shaping, documents, experience
from megatron_rm.ppo.forwards import RolloutModels, rollout_forwards
from megatron_rm.ppo.kl import FixedKLController
from megatron_rm.ppo.losses import PolicyLossSettings
from megatron_rm.ppo.models import PPOModels, in_eval_mode
from megatron_rm.ppo.objectives import ActorObjective, CriticObjective, Rollouts
from megatron_rm.ppo.prompts import PromptSet
from megatron_rm.ppo.reward_sources import ResponseRows, Rewards, RewardSources, response_rows
from megatron_rm.runtime.parallel import Layout
from megatron_rm.runtime.sums import all_reduce_sums, moments


@dataclass
class Context:
    """What every step of a run uses."""

    cfg: PPOConfig
    models: PPOModels
    generator: Generator
    rewards: RewardSources
    controller: FixedKLController
    guards: dict[str, SkipGuard] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.models.layout

    @property
    def vocab_size(self) -> int:
        return self.models.vocab_size


def rollout_texts(tokenizer, prompts: list[list[int]], completions: list[Completion]) -> list[str]:
    """Prompt + response as text for the reward model, here or behind a server (no BOS: its
    tokenizer adds its own; no stop token: the text ends as the model ends every text)."""
    out = []
    for prompt, completion in zip(prompts, completions):
        ids = prompt[1:] if prompt and prompt[0] == tokenizer.bos_token_id else prompt
        out.append(tokenizer.decode(ids + completion.response_ids, skip_special_tokens=False))
    return out


def replica_share(items: list, layout: Layout) -> list:
    """This data-parallel replica's contiguous share of a step's items (their number divides evenly)."""
    per_replica = len(items) // layout.dp
    return items[layout.dp_rank * per_replica:(layout.dp_rank + 1) * per_replica]


def micro_batches(ctx: Context, prompts: list[list[int]], completions: list[Completion],
                  order: list[int]) -> tuple[list[Batch], list[torch.Tensor], list[list[int]]]:
    """The responses in `order`, micro-batch by micro-batch: (batches, ended, rows)."""
    size, pad = ctx.cfg.micro_batch_size(ctx.layout.dp), pad_id(ctx.models.tokenizer)
    batches, ended, rows = [], [], []
    for start in range(0, len(order), size):
        chosen = order[start:start + size]
        batch, stopped = documents([prompts[i] for i in chosen], [completions[i] for i in chosen], pad)
        batches.append(batch)
        ended.append(stopped)
        rows.append(chosen)
    return batches, ended, rows


def score_responses(ctx: Context, prompt_set: PromptSet, which: list[int], completions: list[Completion],
                    batches: list[Batch], rows: list[list[int]]) -> Rewards:
    """The rewards of each micro-batch's responses: response i answers prompt `which[i]` of
    `prompt_set`, and micro-batch k holds responses `rows[k]`."""
    prompts = [prompt_set.ids[p] for p in which]
    tokenizer = ctx.models.tokenizer

    def texts() -> list[list[str]]:
        return [rollout_texts(tokenizer, [prompts[i] for i in chosen], [completions[i] for i in chosen])
                for chosen in rows]

    def function_rows() -> ResponseRows:
        order = [i for chosen in rows for i in chosen]
        return response_rows([prompt_set.fields[which[i]] for i in order],
                             [prompt_set.locations[which[i]] for i in order],
                             [response_text(tokenizer, completions[i]) for i in order])

    return ctx.rewards(batches, texts, function_rows)


def run_step(ctx: Context, step: int, prompt_set: PromptSet, indices: list[int]) -> dict:
    """Step `step` (1-based) on prompts `indices` of `prompt_set` (all replicas'); the step's
    metrics, the same on every rank. The KL controller is updated at the end (not during critic
    warm-up)."""
    cfg, layout, models = ctx.cfg, ctx.layout, ctx.models
    samples = cfg.rollout.samples_per_prompt
    first_number = (step - 1) * cfg.responses_per_step()
    # (prompt, its group: the prompt's position in the step, the response's number in the run)
    numbered = [(index, j, first_number + j * samples + k) for j, index in enumerate(indices) for k in range(samples)]
    mine = replica_share(numbered, layout)  # whole groups: samples of a prompt are contiguous
    which = [index for index, _, _ in mine]
    prompts = [prompt_set.ids[index] for index in which]
    actor_chunks = [models.actor.ddp]
    critic_chunks = [models.critic.ddp] if models.critic is not None else None

    began = time.perf_counter()
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature)
    with in_eval_mode(actor_chunks):
        completions = generate_batched(ctx.generator, prompts, [number for _, _, number in mine], params,
                                       cfg.train.seed, cfg.rollout.batch_size)
    generation_s = time.perf_counter() - began

    began = time.perf_counter()
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    order = torch.randperm(len(mine), generator=shuffle).tolist()
    batches, ended, rows = micro_batches(ctx, prompts, completions, order)
    groups = [torch.tensor([mine[i][1] for i in chosen]) for chosen in rows]
    rewards = score_responses(ctx, prompt_set, which, completions, batches, rows)
    rollout_models = RolloutModels(actor_chunks, critic_chunks, models.reference, layout, ctx.vocab_size,
                                   cfg.rollout.temperature)
    shaping = Shaping(clip=cfg.reward.clip, no_eos=cfg.rollout.no_eos, no_eos_penalty=cfg.rollout.no_eos_penalty,
                      max_new_tokens=cfg.rollout.max_new_tokens, overlong_buffer=cfg.reward.overlong_buffer,
                      overlong_penalty=cfg.reward.overlong_penalty)
    with in_eval_mode(actor_chunks + (critic_chunks or [])):
        parts = rollout_forwards(rollout_models, batches, ended, rewards.combined, shaping, groups)
    kl_coef = ctx.controller.value
    result = experience(parts, advantage_settings(cfg, kl_coef), advantage=cfg.algorithm.advantage,
                        kl_estimator=cfg.kl.estimator, kl_in_loss=cfg.kl.placement == "loss",
                        dp_group=layout.groups.dp)
    scoring_s = time.perf_counter() - began

    began = time.perf_counter()
    train_actor = step > cfg.critic.warmup_steps
    updates = update(ctx, result.rollouts, step, train_actor, kl_coef)
    update_s = time.perf_counter() - began

    kl = _moments(result.kl, layout) if result.kl is not None else {"mean": math.nan}
    if train_actor and cfg.kl.placement == "reward":
        ctx.controller.update(kl["mean"], n_steps=cfg.responses_per_step())
    lengths = torch.tensor([float(len(c.token_ids)) for c in completions], device=runtime.device())
    tokens = torch.tensor([float(lengths.sum()), float(sum(b.tokens for b in batches))], dtype=torch.float64,
                          device=runtime.device())
    new_tokens, document_tokens = all_reduce_sums(tokens, layout.groups.dp).tolist()
    length = _moments(lengths, layout)
    raw_moments, reward_moments = _moments(_scored(rewards.raw), layout), _moments(_scored(rewards.combined), layout)
    sources = {}
    if len(rewards.sources) > 1 or ctx.rewards.functions:
        sources = {f"reward_{name}": _moments(_scored(values), layout)["mean"]
                   for name, values in rewards.sources.items()}
    unscored = _moments(torch.isnan(torch.cat(rewards.combined)).double(), layout)
    return _finite({
        "reward_raw_mean": raw_moments["mean"], "reward_raw_std": raw_moments["std"],
        "reward_mean": reward_moments["mean"], "reward_std": reward_moments["std"], **sources,
        **({"unscored_fraction": unscored["mean"]} if ctx.rewards.functions else {}),
        "kl": kl["mean"], "kl_coef": kl_coef if cfg.kl.placement != "none" else None,
        "kl_coef_next": ctx.controller.value if cfg.kl.placement != "none" else None,
        **updates, **({"explained_variance": _explained_variance(result.rollouts, layout)} if critic_chunks else {}),
        "response_length_mean": length["mean"], "response_length_max": length["max"],
        "eos_fraction": _moments(torch.cat(ended).float().to(runtime.device()), layout)["mean"],
        "responses": int(length["count"]), "actor_trained": train_actor,
        "new_tokens": int(new_tokens), "document_tokens": int(document_tokens),
        "generation_s": generation_s, "scoring_s": scoring_s, "update_s": update_s,
        "generation_tokens_per_s": new_tokens / generation_s,
        "scoring_tokens_per_s": document_tokens / scoring_s,
        "update_tokens_per_s": document_tokens * cfg.ppo.epochs / update_s,
    })


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
    actor = ActorObjective(ctx.vocab_size, cfg.rollout.temperature, policy_settings(cfg, kl_coef))
    critic = CriticObjective(cfg.ppo.value_clip)
    sums = {"actor": None, "critic": None}
    norms = {"actor": [], "critic": []}
    first = None
    for epoch in range(cfg.ppo.epochs):
        order = list(range(len(rollouts)))
        if epoch:
            shuffle = torch.Generator().manual_seed((cfg.train.seed * 1_000_003 + step) * 101 + epoch)
            order = torch.randperm(len(rollouts), generator=shuffle).tolist()
        for start in range(0, len(order), per_update):
            chosen = [rollouts[i] for i in order[start:start + per_update]]
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
                       first_clip_fraction=first["clipped"], first_approx_kl=first["approx_kl"])
        if "kl_loss" in policy:
            metrics["kl_loss"] = policy["kl_loss"]
    return metrics


def _scored(per_batch: list[torch.Tensor]) -> torch.Tensor:
    """The responses that have a reward (a reward function's None is NaN)."""
    values = torch.cat(per_batch)
    return values[~torch.isnan(values)]


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
