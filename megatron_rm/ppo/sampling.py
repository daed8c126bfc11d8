"""A step's responses: sampled on each data-parallel replica from its share of the step's
prompts, scored where they were sampled, then shared with every replica (token ids and
rewards), so that the update can lay the step out as a global batch (`step`).

Dynamic sampling (DAPO; `rollout.dynamic_sampling`): a group whose responses all have the same
reward teaches nothing to a group estimator, so it is dropped and the step samples the next
`train.prompts_per_step` prompts of the stream, until it holds `train.prompts_per_step` groups
that differ (the first ones in stream order; the rest are dropped too, as verl does) or
`rollout.dynamic_sampling_max_batches` rounds have been sampled, which stops the run. The
prompt cursor moves past every prompt sampled, and is checkpointed, so a resumed run samples
the same prompts. A response draws from (train.seed, its stream position x samples + its
number), the same at any layout and after a resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from megatron_rm.data import Batch, pad_id
from megatron_rm.errors import TrainingError
from megatron_rm.generation.engine import generate_batched
from megatron_rm.generation.generator import Completion, response_text
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.ppo.context import Context
from megatron_rm.ppo.experience import documents
from megatron_rm.ppo.models import in_eval_mode
from megatron_rm.ppo.prompts import PromptSampler, PromptSet
from megatron_rm.ppo.reward_sources import ResponseRows, Rewards, response_rows
from megatron_rm.runtime.parallel import Layout, all_replicas


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


@dataclass
class StepResponses:
    """A step's responses, the same on every rank, in group order (a group's responses together)."""

    prompts: list[int]
    """Each response's prompt (an index into the prompt set)."""
    groups: list[int]
    """Each response's group: its prompt's position among the step's groups."""
    completions: list[Completion]
    rewards: dict[str, torch.Tensor]
    """(responses,) `combined`, `raw` and each source's (`Rewards`), NaN for no reward."""
    cursor: int
    """The prompt cursor after the step."""
    rounds: int = 1
    dropped_groups: int = 0
    generated_tokens: int = 0
    """New tokens sampled over every round and replica, dropped groups included."""
    generation_s: float = 0.0
    scoring_s: float = 0.0


def sample_step(ctx: Context, prompt_set: PromptSet, sampler: PromptSampler, version: int | None = None) -> \
        StepResponses:
    """The step's responses from `sampler.cursor` on (`sampler` itself is left as it is), sampled by
    the engine holding the actor's weights of `version`."""
    cfg = ctx.cfg
    P = cfg.train.prompts_per_step
    result = StepResponses([], [], [], {}, sampler.cursor, rounds=0)
    kept = []
    while len(kept) < P:
        if result.rounds == cfg.rollout.dynamic_sampling_max_batches:
            raise TrainingError(f"dynamic sampling found {len(kept)} of train.prompts_per_step={P} groups whose "
                                f"rewards differ in rollout.dynamic_sampling_max_batches={result.rounds} rounds of "
                                f"{P} prompts: raise the bound, or check the reward (is every response right, or "
                                "every one wrong?)")
        result.rounds += 1
        for group in _sample_round(ctx, prompt_set, sampler, result, version):
            if len(kept) < P and (not cfg.rollout.dynamic_sampling or
                                  _differs([rewards["combined"] for _, _, rewards in group])):
                kept.append(group)
            else:
                result.dropped_groups += 1
        if not cfg.rollout.dynamic_sampling:
            break
    for g, group in enumerate(kept):
        for prompt, completion, rewards in group:
            result.prompts.append(prompt)
            result.groups.append(g)
            result.completions.append(completion)
            for name, value in rewards.items():
                result.rewards.setdefault(name, []).append(value)
    result.rewards = {name: torch.tensor(values) for name, values in result.rewards.items()}
    return result


def _sample_round(ctx: Context, prompt_set: PromptSet, sampler: PromptSampler, result: StepResponses,
                  version: int | None) -> list:
    """The next train.prompts_per_step prompts from `result.cursor` (which moves past them), their
    responses sampled and scored on this replica's share and shared with every replica: one group
    per prompt, a list of (prompt, completion, {reward name: value}). Times and tokens go to `result`."""
    cfg, layout = ctx.cfg, ctx.layout
    P, G = cfg.train.prompts_per_step, cfg.rollout.samples_per_prompt
    # (prompt, the response's number in the run: its prompt's stream position x G + k)
    numbered = [(index, (result.cursor + j) * G + k) for j, index in enumerate(sampler.at(result.cursor, P))
                for k in range(G)]
    result.cursor += P
    mine = replica_share(numbered, layout)
    which = [index for index, _ in mine]
    began = time.perf_counter()
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature)
    with in_eval_mode([ctx.models.actor.ddp]):
        sampled = generate_batched(ctx.engine, [prompt_set.ids[index] for index in which],
                                   [number for _, number in mine], params, cfg.train.seed, cfg.rollout.batch_size,
                                   version)
    result.generation_s += time.perf_counter() - began
    began = time.perf_counter()
    batches, _, rows = micro_batches(ctx, [prompt_set.ids[index] for index in which], sampled,
                                     list(range(len(mine))))
    scored = score_responses(ctx, prompt_set, which, sampled, batches, rows)
    flat = {"combined": torch.cat(scored.combined), "raw": torch.cat(scored.raw),
            **{name: torch.cat(values) for name, values in scored.sources.items()}}
    shared = all_replicas([(completion, {name: float(values[i]) for name, values in flat.items()})
                           for i, completion in enumerate(sampled)], layout)
    result.scoring_s += time.perf_counter() - began
    result.generated_tokens += sum(len(completion.token_ids) for completion, _ in shared)
    return [[(numbered[j * G + k][0], *shared[j * G + k]) for k in range(G)] for j in range(P)]


def _differs(rewards: list[float]) -> bool:
    """Whether a group's rewards (NaN: none) hold two different values."""
    scored = [r for r in rewards if r == r]
    return len(scored) >= 2 and max(scored) > min(scored)
