"""megatron-core DDP, optimizer and learning-rate schedule for one model, and one guarded
optimizer step. A run with several trained models builds one of each per model, each from
its own OptimizerConfig."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer import optimizer as mcore_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_rm.config import OptimizerConfig
from megatron_rm.core.schedule import run_objective
from megatron_rm.errors import TrainingError
from megatron_rm.runtime.parallel import Layout


def build_optimizer(model, t: OptimizerConfig, total_steps: int, *, precision: str = "fp32",
                    use_distributed_optimizer: bool = False):
    """(DDP-wrapped model, megatron optimizer, learning-rate scheduler) for a run of `total_steps`.

    megatron's default parameter groups already exempt norms, biases and every
    other 1-D parameter from weight decay (`wd_mult=0`); the scheduler applies it.
    """
    ddp_model = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=use_distributed_optimizer,
        ),
        model,
    )
    model.config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        MegatronOptimizerConfig(
            optimizer="adam",
            decoupled_weight_decay=t.optimizer == "adamw",
            lr=t.lr,
            min_lr=t.min_lr,
            weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1,
            adam_beta2=t.adam_beta2,
            adam_eps=t.adam_eps,
            # Clipping happens in `train_step`, after the non-finite check.
            clip_grad=0.0,
            bf16=precision == "bf16",
            use_distributed_optimizer=use_distributed_optimizer,
        ),
        [ddp_model],
    )
    warmup = t.warmup_steps(total_steps)
    decay_steps = max(total_steps, warmup + 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=t.lr,
        min_lr=t.min_lr if t.lr_decay_style != "constant" else t.lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=t.lr_decay_style,
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
    return ddp_model, optimizer, scheduler


@dataclass
class StepResult:
    sums: torch.Tensor
    """Metric sums over every data-parallel rank (see `megatron_rm.objectives`)."""
    grad_norm: float
    """Global gradient norm before clipping (TP, PP and DP), NaN or inf when skipped for it."""
    skipped: bool
    lr: float
    """The learning rate this step used."""


def train_step(ddp_model, optimizer, scheduler, objective, batches, clip_grad: float, layout: Layout) -> StepResult:
    """One optimizer step over this rank's micro-batches.

    A non-finite loss or gradient norm skips the update: every rank sees the same
    (all-reduced) values, so all skip together. The learning-rate schedule
    advances either way, as the step's data is consumed either way.
    """
    lr = optimizer.param_groups[0]["lr"]
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    sums = run_objective([ddp_model], batches, objective, layout, forward_only=False)
    optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    skipped = not (math.isfinite(grad_norm) and objective.loss_is_finite(sums))
    if not skipped:
        if clip_grad > 0:
            # Through the module attribute: on the CPU it is cpu_compat's rescale.
            mcore_optimizer.clip_grad_by_total_norm_fp32(optimizer.get_parameters(), clip_grad, grad_norm)
        optimizer.step_with_ready_grads()
    scheduler.step(increment=1)
    return StepResult(sums, grad_norm, skipped, lr)


class SkipGuard:
    """Counts skipped steps; more than `max_in_a_row` consecutive ones stop the run."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.total = 0
        self.in_a_row = 0

    def state_dict(self) -> dict:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_a_row = state["total"], state.get("in_a_row", 0)

    def record(self, step: int, result: StepResult) -> None:
        if not result.skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row > self.max_in_a_row:
            raise TrainingError(
                f"step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient norm "
                f"(last gradient norm {result.grad_norm}), more than train.max_skipped={self.max_in_a_row}; "
                "lower train.lr or check the data and the starting checkpoint")
