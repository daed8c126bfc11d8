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
from megatron_rm.generation.generator import Completion, Generator, generate_batched
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.ppo.experience import Shaping, documents, experience
from megatron_rm.ppo.forwards import RolloutModels, rollout_forwards
from megatron_rm.ppo.kl import FixedKLController
from megatron_rm.ppo.losses import PolicyLossSettings
from megatron_rm.ppo.models import PPOModels, in_eval_mode
from megatron_rm.ppo.objectives import ActorObjective, CriticObjective, Rollouts
from megatron_rm.ppo.rewards import ModelRewards, ServerRewards
from megatron_rm.runtime.parallel import Layout
from megatron_rm.runtime.sums import all_reduce_sums, moments


@dataclass
class Context:
    """What every step of a run uses."""

    cfg: PPOConfig
    models: PPOModels
    generator: Generator
    rewards: ModelRewards | ServerRewards
    controller: FixedKLController
    guards: dict[str, SkipGuard] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.models.layout

    @property
    def vocab_size(self) -> int:
        return self.models.vocab_size

    def texts(self, prompts: list[list[int]], completions: list[Completion]) -> list[str]:
        return rollout_texts(self.models.tokenizer, prompts, completions)


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


def score_responses(ctx: Context, prompts: list[list[int]], completions: list[Completion], batches: list[Batch],
                    rows: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(raw, normalised) rewards of each micro-batch's responses."""
    return ctx.rewards(batches, lambda: [ctx.texts([prompts[i] for i in chosen], [completions[i] for i in chosen])
                                         for chosen in rows])


def run_step(ctx: Context, step: int, prompt_ids: list[list[int]]) -> dict:
    """PPO step `step` (1-based) on the step's prompts (all replicas'); the step's metrics, the same
    on every rank. The KL controller is updated at the end (not during critic warm-up)."""
    cfg, layout, models = ctx.cfg, ctx.layout, ctx.models
    samples = cfg.rollout.samples_per_prompt
    first_number = (step - 1) * cfg.responses_per_step()
    numbered = [(ids, first_number + j * samples + k) for j, ids in enumerate(prompt_ids) for k in range(samples)]
    mine = replica_share(numbered, layout)
    prompts = [ids for ids, _ in mine]
    actor_chunks, critic_chunks = [models.actor.ddp], [models.critic.ddp]

    began = time.perf_counter()
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature)
    with in_eval_mode(actor_chunks):
        completions = generate_batched(ctx.generator, prompts, [number for _, number in mine], params,
                                       cfg.train.seed, cfg.rollout.batch_size)
    generation_s = time.perf_counter() - began

    began = time.perf_counter()
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    order = torch.randperm(len(mine), generator=shuffle).tolist()
    batches, ended, rows = micro_batches(ctx, prompts, completions, order)
    raw, normalised = score_responses(ctx, prompts, completions, batches, rows)
    rollout_models = RolloutModels(actor_chunks, critic_chunks, models.reference, layout, ctx.vocab_size,
                                   cfg.rollout.temperature)
    shaping = Shaping(clip=cfg.reward.clip, no_eos=cfg.rollout.no_eos, no_eos_penalty=cfg.rollout.no_eos_penalty)
    with in_eval_mode(actor_chunks + critic_chunks):
        parts = rollout_forwards(rollout_models, batches, ended, normalised, shaping)
    kl_coef = ctx.controller.value
    result = experience(parts, kl_coef=kl_coef, estimator=cfg.kl.estimator, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam,
                        dp_group=layout.groups.dp)
    scoring_s = time.perf_counter() - began

    began = time.perf_counter()
    train_actor = step > cfg.critic.warmup_steps
    updates = update(ctx, result.rollouts, step, train_actor)
    update_s = time.perf_counter() - began

    kl = _moments(result.kl, layout)
    if train_actor:
        ctx.controller.update(kl["mean"], n_steps=cfg.responses_per_step())
    lengths = torch.tensor([float(len(c.token_ids)) for c in completions], device=runtime.device())
    tokens = torch.tensor([float(lengths.sum()), float(sum(b.tokens for b in batches))], dtype=torch.float64,
                          device=runtime.device())
    new_tokens, document_tokens = all_reduce_sums(tokens, layout.groups.dp).tolist()
    length = _moments(lengths, layout)
    raw_moments, reward_moments = _moments(torch.cat(raw), layout), _moments(torch.cat(normalised), layout)
    return _finite({
        "reward_raw_mean": raw_moments["mean"], "reward_raw_std": raw_moments["std"],
        "reward_mean": reward_moments["mean"], "reward_std": reward_moments["std"],
        "kl": kl["mean"], "kl_coef": kl_coef, "kl_coef_next": ctx.controller.value,
        **updates, "explained_variance": _explained_variance(result.rollouts, layout),
        "response_length_mean": length["mean"], "response_length_max": length["max"],
        "eos_fraction": _moments(torch.cat(ended).float().to(runtime.device()), layout)["mean"],
        "responses": int(length["count"]), "actor_trained": train_actor,
        "new_tokens": int(new_tokens), "document_tokens": int(document_tokens),
        "generation_s": generation_s, "scoring_s": scoring_s, "update_s": update_s,
        "generation_tokens_per_s": new_tokens / generation_s,
        "scoring_tokens_per_s": document_tokens / scoring_s,
        "update_tokens_per_s": document_tokens * cfg.ppo.epochs / update_s,
    })


def update(ctx: Context, rollouts: list[Rollouts], step: int, train_actor: bool) -> dict:
    """`ppo.epochs` passes of mini-batches over the step's micro-batches: the critic, then (after
    its warm-up) the actor, one optimizer step each per mini-batch. Token means of the losses and
    statistics over every update, and the first mini-batch's actor statistics."""
    cfg, layout, models = ctx.cfg, ctx.layout, ctx.models
    per_update = cfg.mini_batch_size() // layout.dp // cfg.micro_batch_size(layout.dp)
    actor = ActorObjective(ctx.vocab_size, cfg.rollout.temperature,
                           PolicyLossSettings(clip=cfg.ppo.clip, clip_high=cfg.ppo.clip_high,
                                              dual_clip=cfg.ppo.dual_clip, entropy_coef=cfg.ppo.entropy_coef))
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
            jobs = [("critic", models.critic, critic, cfg.critic.optim.clip_grad)]
            if train_actor:
                jobs.append(("actor", models.actor, actor, cfg.actor.optim.clip_grad))
            for name, model, objective, clip in jobs:
                result = train_step(model.ddp, model.optimizer, model.scheduler, objective, chosen, clip, layout)
                ctx.guards[name].record(step, result)
                sums[name] = result.sums if sums[name] is None else sums[name] + result.sums
                norms[name].append(result.grad_norm)
                if name == "actor" and first is None:
                    first = actor.summarize(result.sums)
    metrics = {"critic_lr": models.critic.optimizer.param_groups[0]["lr"],
               "actor_lr": models.actor.optimizer.param_groups[0]["lr"]}
    value = critic.summarize(sums["critic"])
    metrics.update(value_loss=value["loss"], value_clip_fraction=value["clipped"],
                   critic_grad_norm=sum(norms["critic"]) / len(norms["critic"]))
    if sums["actor"] is not None:
        policy = actor.summarize(sums["actor"])
        metrics.update(policy_loss=policy["loss"], clip_fraction=policy["clipped"], approx_kl=policy["approx_kl"],
                       entropy=policy.get("entropy"), policy_tokens=policy["tokens"],
                       actor_grad_norm=sum(norms["actor"]) / len(norms["actor"]),
                       first_clip_fraction=first["clipped"], first_approx_kl=first["approx_kl"])
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
