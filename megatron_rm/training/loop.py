"""Train a Bradley-Terry reward model: the whole run behind `tools/train_rm.py`."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch
import yaml
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_rm import parallel, runtime
from megatron_rm.config import RMConfig, padded_vocab_size, validate
from megatron_rm.data import load_tokenizer, pad_id
from megatron_rm.metrics import summarize
from megatron_rm.model import build_reward_model
from megatron_rm.model.layer_spec import uses_transformer_engine
from megatron_rm.training import checkpoint
from megatron_rm.training.data_setup import (
    eval_micro_batches,
    load_splits,
    sampler_for,
    train_micro_batches,
    write_report,
)
from megatron_rm.training.metrics_log import MetricsLog
from megatron_rm.training.step import run_pair_batches


def train(cfg: RMConfig) -> dict | None:
    """Run `cfg` on this torchrun job; returns the final evaluation summary (None without eval data).

    With `train.max_steps=0` the run only evaluates its starting weights
    (`checkpoint.load`) and saves nothing.
    """
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    # Resolved before any process group starts, so a bad path fails fast.
    start_from = checkpoint.resolve(cfg.checkpoint.load) if cfg.checkpoint.load else None
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")), cuda=runtime.cuda_available(),
             te_available=runtime.te_available(), vocab_size=len(tokenizer))
    is_logger = int(os.environ.get("RANK", "0")) == 0
    layout = parallel.initialize(cfg.parallel, cfg.train.seed)
    run_dir = Path(cfg.run.dir)
    if is_logger:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    train_split, eval_split, report = load_splits(cfg, run_dir)
    sampler = sampler_for(train_split, cfg)
    if is_logger:
        write_report(report, run_dir)
        layers = "transformer_engine" if uses_transformer_engine(cfg.model) else "local"
        print(f"layout: tp={layout.tp} pp={layout.pp} dp={layout.dp} on {runtime.device().type} "
              f"({runtime.backend()}), {layers} layers, {cfg.data.batching} batching", flush=True)
    vocab = padded_vocab_size(len(tokenizer), cfg.model)
    model = build_reward_model(cfg.model, cfg.parallel, len(tokenizer))
    if start_from:
        loaded_step = checkpoint.load(model, start_from, cfg.model, vocab)
        if is_logger:
            print(f"loaded weights from {start_from} (step {loaded_step})", flush=True)
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg)
    log = MetricsLog(run_dir, enabled=is_logger)
    pad = pad_id(tokenizer)

    def evaluate(step: int) -> dict:
        start = time.perf_counter()
        summary = evaluate_pairs(ddp_model, eval_micro_batches(eval_split, layout, cfg, pad))
        log.write(step, "eval", summary, tokens_per_s=summary["tokens"] / (time.perf_counter() - start))
        return summary

    t = cfg.train
    interval_sums, interval_start = None, time.perf_counter()
    for step in range(1, t.max_steps + 1):
        batches = train_micro_batches(train_split, sampler, step - 1, layout, cfg, pad)
        sums, grad_norm = train_step(ddp_model, optimizer, scheduler, batches)
        interval_sums = sums if interval_sums is None else interval_sums + sums
        if step % t.log_interval == 0 or step == t.max_steps:
            interval = summarize(interval_sums)
            log.write(step, "train", interval,
                      tokens_per_s=interval["tokens"] / (time.perf_counter() - interval_start),
                      lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)
            interval_sums, interval_start = None, time.perf_counter()
        if step < t.max_steps and eval_split and cfg.eval.interval and step % cfg.eval.interval == 0:
            evaluate(step)
        if step < t.max_steps and cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0:
            checkpoint.save(model, run_dir / "checkpoints", step, cfg.model, vocab, sampler.state_dict(step))
    summary = evaluate(t.max_steps) if eval_split else None
    if t.max_steps > 0:
        saved = checkpoint.save(model, run_dir / "checkpoints", t.max_steps, cfg.model, vocab,
                                sampler.state_dict(t.max_steps))
        if is_logger:
            print(f"saved {saved}", flush=True)
    return summary


def train_step(ddp_model, optimizer, scheduler, batches) -> tuple[torch.Tensor, float]:
    """One optimizer step over this rank's micro-batches; returns (global metric sums, grad norm)."""
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    sums = run_pair_batches([ddp_model], batches, forward_only=False)
    _, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    return sums, grad_norm


def evaluate_pairs(ddp_model, chunks) -> dict:
    """Metrics over every data-parallel rank's evaluation micro-batches (given in chunks)."""
    ddp_model.eval()
    with torch.no_grad():
        sums = sum(run_pair_batches([ddp_model], batches, forward_only=True) for batches in chunks)
    ddp_model.train()
    return summarize(sums)


def build_optimizer(model, cfg: RMConfig):
    """megatron DDP around `model`, megatron's Adam, and the learning-rate schedule."""
    t = cfg.train
    ddp_model = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        ),
        model,
    )
    model.config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=t.lr,
            weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1,
            adam_beta2=t.adam_beta2,
            adam_eps=t.adam_eps,
            clip_grad=t.clip_grad,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        ),
        [ddp_model],
    )
    schedule_steps = max(t.max_steps, t.lr_warmup_steps + 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=t.lr,
        min_lr=t.lr,
        lr_warmup_steps=t.lr_warmup_steps,
        lr_decay_steps=schedule_steps,
        lr_decay_style="constant",
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=schedule_steps,
        wd_incr_style="constant",
    )
    return ddp_model, optimizer, scheduler
