"""Responses to the evaluation prompts (greedy unless eval.temperature > 0), scored by the run's
reward, written to `run.dir/samples/eval_step_<N>.jsonl` (each prompt row's fields plus
`response`, `reward`, `finish_reason`, `response_length`), with their mean reward for metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch.distributed as dist

from megatron_rm.generation.engine import generate_batched
from megatron_rm.generation.generator import EOS, response_text
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.ppo.context import Context
from megatron_rm.ppo.models import in_eval_mode
from megatron_rm.ppo.prompts import PromptSet
from megatron_rm.ppo.sampling import micro_batches, score_responses
from megatron_rm.runtime.parallel import gather_to_first


def evaluate(ctx: Context, step: int, prompts: PromptSet, run_dir: Path) -> dict | None:
    """Collective; the summary on global rank 0 (None elsewhere)."""
    layout, cfg = ctx.layout, ctx.cfg
    mine = list(range(layout.dp_rank, len(prompts), layout.dp))
    ids = [prompts.ids[i] for i in mine]
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature)
    with in_eval_mode([ctx.models.actor.ddp]):
        # Draws of their own (seed + 1): training responses are numbered from 0 with the run's seed.
        completions = generate_batched(ctx.engine, ids, mine, params, cfg.train.seed + 1, cfg.rollout.batch_size,
                                       version=step)
    batches, _, rows = micro_batches(ctx, ids, completions, list(range(len(mine))))
    rewards = score_responses(ctx, prompts, mine, completions, batches, rows)
    sources = rewards.sources if len(rewards.sources) > 1 else {}
    done = []
    for k, chosen in enumerate(rows):
        for j, i in enumerate(chosen):
            completion = completions[i]
            done.append((mine[i], {"response": response_text(ctx.models.tokenizer, completion),
                                   "reward": _number(rewards.raw[k][j]),
                                   "reward_normalized": _number(rewards.combined[k][j]),
                                   **{f"reward_{name}": _number(values[k][j]) for name, values in sources.items()},
                                   "finish_reason": completion.finish_reason,
                                   "response_length": len(completion.token_ids)}))
    gathered = gather_to_first(done, layout)
    if dist.get_rank() != 0:
        return None
    results = dict(item for share in gathered for item in share)
    samples = run_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    with (samples / f"eval_step_{step}.jsonl").open("w", encoding="utf-8") as out:
        for index in range(len(prompts)):
            added = dict(results[index])
            if not cfg.reward.normalize:
                added.pop("reward_normalized")
            out.write(json.dumps({**prompts.fields[index], **added}) + "\n")
    scored = [results[i]["reward"] for i in range(len(prompts)) if results[i]["reward"] is not None]
    mean = sum(scored) / len(scored) if scored else math.nan
    return {"reward_mean": mean,
            "reward_std": math.sqrt(sum((r - mean) ** 2 for r in scored) / len(scored)) if scored else math.nan,
            "response_length_mean": sum(results[i]["response_length"] for i in results) / len(results),
            "eos_fraction": sum(results[i]["finish_reason"] == EOS for i in results) / len(results),
            "prompts": len(prompts)}


def _number(value) -> float | None:
    """A reward for JSON: None for no reward (NaN)."""
    value = float(value)
    return None if math.isnan(value) else value
