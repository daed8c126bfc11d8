"""A PPO or GRPO run (`tools/train_ppo.py`, `tools/train_grpo.py`): the actor (and the critic of
an estimator that has one) trained against a reward, with the KL to the initial actor held in
check, saved and resumed exactly.

A checkpoint holds the actor and, when the advantage estimator has one, the critic, with their
optimizers and schedules, the KL controller, the prompt sampler and its cursor, the skip
counters and every rank's RNG, written atomically with `latest` (`core.checkpoint`). The
reference policy is always `actor.init`: its weights are taken into CPU memory before a
resumed run's checkpoint is loaded over the actor.

A reward server that still fails after `reward.retries` stops the run on every rank together,
after saving the last completed step (unless it is saved already): a failed step has changed
nothing a checkpoint holds (its rewards come before any update; the sampler's cursor moves only
once a step is done; sampling draws from generators of its own), so that checkpoint is exactly
the one a save after that step writes, and `checkpoint.load=auto` goes on as if the server had
never failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_rm import runtime
from megatron_rm.config import CheckpointConfig
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import LATEST
from megatron_rm.core.optim import SkipGuard
from megatron_rm.data.sources import iter_raw_rows
from megatron_rm.errors import ConfigError, DataError, RewardServerError
from megatron_rm.generation.engines import build_engine, engine_problems
from megatron_rm.generation.prompts import end_token_ids
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.ppo.config import PPOConfig, validate_ppo
from megatron_rm.ppo.context import Context
from megatron_rm.ppo.evaluation import evaluate
from megatron_rm.ppo.kl import KL_UNITS, FixedKLController, kl_controller
from megatron_rm.ppo.models import PPOModels, build_models, find_sources
from megatron_rm.ppo.prompts import PromptSampler, PromptSet, load_prompts
from megatron_rm.ppo.remote_reward import RemoteReward
from megatron_rm.ppo.reward_sources import RewardSources
from megatron_rm.ppo.rewards import ModelRewards, ReplicasAgree, ServerRewards
from megatron_rm.ppo.step import load_actor_weights, run_step
from megatron_rm.reward_functions.function import RewardFunction
from megatron_rm.training.lifecycle import RunLifecycle
from megatron_rm.training.resume import restore, start_source


def train_ppo(cfg: PPOConfig) -> dict | None:
    """Run `cfg` on this torchrun job; the last evaluation's summary on rank 0 (else None)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate_ppo(cfg, world_size, cuda=runtime.cuda_available())
    for path in (cfg.data.prompts_path, cfg.data.eval_prompts_path):  # before the models take a minute to build
        if path:
            iter_raw_rows(path)  # checks the path and its format, reads nothing
    functions = [RewardFunction.load(spec) for spec in cfg.reward.functions]
    sources = find_sources(cfg, world_size, cuda=runtime.cuda_available(), te_available=runtime.te_available())
    problems = engine_problems(cfg.rollout.engine, sources.actor.config,
                               SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature),
                               cuda=runtime.cuda_available())
    if problems:  # before the models take a minute to build
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    resume_from = start_source(CheckpointConfig(load=cfg.checkpoint.load), cfg.run.dir)

    t = cfg.train
    tokenizer, actor_config = sources.actor.tokenizer, sources.actor.config
    prompt_args = dict(room=actor_config.max_sequence_length - cfg.rollout.max_new_tokens,
                       prompt_policy=cfg.data.prompt_policy, on_invalid=cfg.data.on_invalid,
                       max_new_tokens=cfg.rollout.max_new_tokens,
                       max_sequence_length=actor_config.max_sequence_length)
    train_prompts = load_prompts(cfg.data.prompts_path, tokenizer, **prompt_args)
    eval_prompts = (load_prompts(cfg.data.eval_prompts_path, tokenizer, limit=cfg.eval.max_prompts, **prompt_args)
                    if cfg.data.eval_prompts_path else None)
    for prompts in filter(None, (train_prompts, eval_prompts)):
        for function in functions:  # before the models take a minute to build
            problem = function.column_problem(prompts.fields, prompts.locations)
            if problem:
                raise DataError(problem)

    life = RunLifecycle(cfg.run.dir, cfg)
    say = life.say
    updates_per_step = cfg.ppo.epochs * (cfg.responses_per_step() // cfg.mini_batch_size())
    models = build_models(cfg, sources, actor_steps=max(t.max_steps - cfg.critic.warmup_steps, 0) * updates_per_step,
                          critic_steps=t.max_steps * updates_per_step)
    layout = models.layout
    sampler = PromptSampler(len(train_prompts), t.prompts_per_step, t.seed)
    controller = kl_controller(cfg.kl.type, cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
    guards = {"actor": SkipGuard(t.max_skipped), "critic": SkipGuard(t.max_skipped)}
    objects = {"kl_controller": controller, "sampler": sampler, "actor_skips": guards["actor"],
               "critic_skips": guards["critic"]}
    start = restore(resume_from, models.states(), objects, layout, say, resume=True,
                    load_optimizer=cfg.checkpoint.load_optimizer)
    ctx = build_context(cfg, models, functions, controller, guards, end_token_ids(tokenizer, cfg.actor.init), start)

    life.begin()
    say(f"layout: tp={layout.tp} pp={layout.pp} dp={layout.dp} on {runtime.device().type}; "
        f"{_prompt_line('prompts', train_prompts)}"
        + (f"; {_prompt_line('eval prompts', eval_prompts)}" if eval_prompts else "")
        + f"; {cfg.responses_per_step()} responses per step; advantage {cfg.algorithm.advantage}; "
        + (f"KL in the {cfg.kl.placement} ({cfg.kl.type}, {cfg.kl.estimator}, {KL_UNITS})"
           if cfg.kl.placement != "none" else "no KL"))
    log = life.metrics_log(cfg.logging, since=start)

    checkpoints_dir = life.checkpoints
    # The step `checkpoint.load=auto` resumes from as things stand (a resumed run's own start).
    saved_step = start if start and _latest_name(checkpoints_dir) == f"step_{start}" else None

    def save(step: int) -> None:
        nonlocal saved_step
        sampler.step = step
        saved = checkpoint.save(checkpoints_dir, step, models.states(), objects=objects, layout=layout,
                                tokenizer=tokenizer, keep=cfg.checkpoint.keep)
        saved_step = step
        say(f"saved {saved}")

    def run_eval(step: int) -> dict | None:
        nonlocal summary
        if eval_prompts is None:
            return None
        summary = evaluate(ctx, step, eval_prompts, life.run_dir)
        if summary is not None:
            log.write(step, "eval", summary, kl_coef=controller.value)
        return summary

    summary = None
    completed = start  # the last step whose update finished

    def step(n: int) -> None:
        nonlocal completed
        metrics = run_step(ctx, n, train_prompts, sampler)
        completed = n
        if n % t.log_interval == 0 or n == t.max_steps:
            log.write(n, "train", metrics, total_steps=t.max_steps, kl_units=KL_UNITS,
                      skipped_steps=guards["actor"].total + guards["critic"].total)

    def finish(last: int) -> dict | None:
        if last > start:
            run_eval(last)
            save(last)
        return summary

    try:
        if start == 0:
            run_eval(0)  # the starting policy, before any update
        return life.run(start, t.max_steps, step, finish, evaluate=run_eval, save=save,
                        eval_interval=cfg.eval.interval, save_interval=cfg.checkpoint.save_interval)
    except RewardServerError as error:
        # Every rank is here together (`ReplicasAgree`), in a step (before its update) or an
        # evaluation: the state is still the last completed step's (see the module's docstring).
        if completed and saved_step != completed:
            save(completed)
        if completed:
            where = (f"the last completed step, {completed}, is saved in {checkpoints_dir / f'step_{completed}'}; "
                     "once the server answers again, resume with checkpoint.load=auto")
        else:
            where = "no step had completed, so nothing was saved; start the run again once the server answers"
        raise RewardServerError(f"{error}\n{where}") from None
    finally:
        log.close()
        ctx.engine.close()


def build_context(cfg: PPOConfig, models: PPOModels, functions: list[RewardFunction], controller: FixedKLController,
                  guards: dict[str, SkipGuard], eos_token_ids: tuple[int, ...], start: int = 0) -> Context:
    """What every step uses: the models, the rollout engine (`rollout.engine`, ending responses
    at `eos_token_ids`, holding the actor's weights as of step `start`), the reward (`functions`
    and the job's reward model or the server), the KL controller."""
    model = None
    if models.reward is not None:
        model = ModelRewards(models.reward, cfg.reward.normalize)
    elif cfg.reward.url:
        model = ReplicasAgree(ServerRewards(RemoteReward(cfg.reward.url, timeout_s=cfg.reward.timeout_s,
                                                         retries=cfg.reward.retries, backoff_s=cfg.reward.backoff_s,
                                                         batch_size=cfg.reward.batch_size),
                                            models.layout))
    rewards = RewardSources(model, functions, cfg.reward.weights, cfg.reward.combine, models.layout)
    engine = build_engine(cfg.rollout.engine, [models.actor.ddp], models.layout, models.actor.state.config,
                          vocab_size=models.vocab_size, eos_token_ids=eos_token_ids,
                          dtype=torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32,
                          cuda=runtime.cuda_available(), version=start)
    ctx = Context(cfg, models, engine, rewards, controller, guards)
    load_actor_weights(ctx, start)
    return ctx


def _latest_name(checkpoints_dir: Path) -> str | None:
    latest = checkpoints_dir / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def _prompt_line(name: str, prompts: PromptSet) -> str:
    line = f"{len(prompts)} {name} from {prompts.path}"
    if prompts.problems.total:
        line += f" ({prompts.problems.total} invalid skipped: {prompts.problems.by_reason()})"
    if prompts.truncated:
        line += f" ({prompts.truncated} truncated)"
    return line
