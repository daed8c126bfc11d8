"""One training run: a reward model (`tools/train_rm.py`) or supervised fine-tuning of a policy
(`tools/train_sft.py`), which differ only in their `Task`."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from megatron_rm import runtime
from megatron_rm.config import RMConfig, TrainConfig, warmup_problem
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import DEFAULT_MODEL
from megatron_rm.core.optim import SkipGuard, train_step
from megatron_rm.core.schedule import run_objective
from megatron_rm.data import load_tokenizer, pad_id
from megatron_rm.data.ending import Ending
from megatron_rm.errors import ConfigError
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.model.layer_spec import layer_implementation
from megatron_rm.objectives import build_objective, model_for_loss
from megatron_rm.runtime import parallel
from megatron_rm.training import flops
from megatron_rm.training.checks import validate
from megatron_rm.training.data_setup import (
    DataPosition,
    MicroBatching,
    eval_micro_batches,
    labelling_for,
    load_splits,
    sampler_for,
    train_micro_batches,
    write_report,
)
from megatron_rm.training.lifecycle import RunLifecycle
from megatron_rm.training.resume import restore, start_source
from megatron_rm.training.task import REWARD_MODEL, Task


def train(cfg: RMConfig, task: Task = REWARD_MODEL) -> dict | None:
    """Run `cfg` on this torchrun job; returns the final evaluation summary (None without eval data).

    With `train.max_steps=0` the run only evaluates its starting weights
    (`checkpoint.load`) and saves nothing.
    """
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    # Found before any process group starts, so a bad path fails fast.
    source = start_source(cfg.checkpoint, cfg.run.dir)
    cfg = dataclasses.replace(cfg, model=model_for_loss(cfg.loss, cfg.model))
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")), cuda=runtime.cuda_available(),
             te_available=runtime.te_available(), vocab_size=len(tokenizer), model_kind=task.model_kind)
    objective = build_objective(cfg.loss, cfg.model.num_labels, vocab_size=cfg.model.vocab_size or len(tokenizer))
    life = RunLifecycle(cfg.run.dir, cfg)
    say, run_dir = life.say, life.run_dir

    t = cfg.train
    layout = parallel.initialize(cfg.parallel, t.seed)
    life.begin()
    train_split, eval_split, report = load_splits(cfg.data, cfg.model.tokenizer, run_dir, objective.grouping,
                                                     labelling_for(cfg), Ending.of(cfg.model))
    objective.check_data(train_split.store, cfg.data.train_path)
    sampler = sampler_for(train_split, cfg.data, t)
    total = total_steps(t, sampler.steps_per_epoch)
    if life.is_logger:
        write_report(report, run_dir)
        say(f"layout: tp={layout.tp} pp={layout.pp} dp={layout.dp} on {runtime.device().type} "
            f"({runtime.backend()}), {layer_implementation(cfg.model)} layers, {cfg.data.batching} batching, "
            f"{t.precision}, loss {cfg.loss.type}; {total} steps ({sampler.steps_per_epoch} per epoch), "
            f"warm-up {t.warmup_steps(total)}")
        if train_split.store.has_margins() and cfg.loss.type != "margin":
            say(f"note: the data has per-pair margins; loss.type={cfg.loss.type} does not use them "
                "(loss.type=margin does)")
    trained = build_trainable(task.model_kind, cfg.model, cfg.parallel, len(tokenizer), t, total,
                              precision=t.precision, recompute=t.recompute,
                              use_distributed_optimizer=cfg.parallel.use_distributed_optimizer)
    ddp_model, optimizer, scheduler = trained.ddp, trained.optimizer, trained.scheduler
    padded_vocab = trained.state.padded_vocab_size
    models = {DEFAULT_MODEL: trained.state}
    guard, position = SkipGuard(t.max_skipped), DataPosition(sampler)
    objects = {"sampler": position, "skip_guard": guard}
    start = restore(source, models, objects, layout, say, resume=t.max_steps != 0,
                    load_optimizer=cfg.checkpoint.load_optimizer)
    log = life.metrics_log(cfg.logging, since=start if t.max_steps else None)  # an evaluation alone adds to the log
    train_batching = MicroBatching.of(cfg.data, t.micro_batch_size, pad_id(tokenizer))
    eval_batching = MicroBatching.of(cfg.data, cfg.eval.micro_batch_size or t.micro_batch_size, pad_id(tokenizer),
                                     train_micro_batch_size=t.micro_batch_size)
    peak = flops.peak_flops(cfg.logging.peak_flops, t.precision)

    def evaluate(step: int) -> dict:
        began = time.perf_counter()
        ddp_model.eval()
        with torch.no_grad():
            sums = sum(run_objective([ddp_model], batches, objective, layout, forward_only=True)
                       for batches in eval_micro_batches(eval_split, layout, eval_batching))
        ddp_model.train()
        summary = objective.summarize(sums)
        log.write(step, "eval", _public(summary),
                  tokens_per_s=summary["tokens"] / (time.perf_counter() - began))
        return summary

    def save(step: int, **extra) -> None:
        position.step = step
        saved = checkpoint.save(life.checkpoints, step, models, objects=objects, layout=layout,
                                tokenizer=tokenizer, keep=cfg.checkpoint.keep,
                                **objective.checkpoint_metadata(cfg.data), **extra)
        say(f"saved {saved}")

    # Throughput counts training steps only: evaluation and saving are timed apart.
    interval_sums, interval_seconds, run_start = None, 0.0, time.perf_counter()

    def step(n: int) -> None:
        nonlocal interval_sums, interval_seconds
        began = time.perf_counter()
        batches = train_micro_batches(train_split, sampler, n - 1, layout, train_batching)
        result = train_step(ddp_model, optimizer, scheduler, objective, batches, t.clip_grad, layout)
        interval_seconds += time.perf_counter() - began
        guard.record(n, result)
        interval_sums = result.sums if interval_sums is None else interval_sums + result.sums
        if n % t.log_interval == 0 or n == total:
            interval = objective.summarize(interval_sums)
            model_flops = flops.training_flops(cfg.model, interval["tokens"], interval["squared_lengths"],
                                               padded_vocab if task.output_layer else 0)
            rate = model_flops / interval_seconds
            per_step = (time.perf_counter() - run_start) / (n - start)
            log.write(n, "train", _public(interval), total_steps=total, lr=result.lr,
                      grad_norm=result.grad_norm, skipped_steps=guard.total,
                      tokens_per_s=interval["tokens"] / interval_seconds, flops_per_s=rate,
                      mfu=rate / (peak * layout.world_size) if peak else None,
                      eta_s=per_step * (total - n))
            interval_sums, interval_seconds = None, 0.0

    def finish(last: int) -> dict | None:
        summary = evaluate(last) if eval_split else None
        if last > start:
            save(last, **task.final_metadata(summary))
        return summary

    try:
        return life.run(start, total, step, finish, evaluate=evaluate if eval_split else None, save=save,
                        eval_interval=cfg.eval.interval, save_interval=cfg.checkpoint.save_interval)
    finally:
        log.close()


def total_steps(t: TrainConfig, steps_per_epoch: int) -> int:
    """train.max_steps, else train.epochs (default 1) whole epochs."""
    if t.max_steps is not None:
        return t.max_steps
    total = (t.epochs or 1) * steps_per_epoch
    problem = warmup_problem(t, total, "train", f"the run's {total} steps (train.epochs={t.epochs or 1} x "
                                                f"{steps_per_epoch} per epoch)")
    if problem:
        raise ConfigError(f"invalid configuration:\n  {problem}")
    return total


def _public(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "squared_lengths"}
