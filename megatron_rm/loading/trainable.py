"""A model to train, built the same way by every loop: this rank's stage of a reward model or a
policy at the job's layout, its starting weights (a found source's, or the recipe's random
initialisation), the data-parallel wrapper with its optimizer and learning-rate schedule, and the
state a checkpoint saves and restores. Reward-model and SFT training (`training.loop`) and PPO's
actor and critic (`ppo.models`) build theirs here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_rm.config import ModelConfig, OptimizerConfig, ParallelConfig, padded_vocab_size
from megatron_rm.core.checkpoint import ModelState
from megatron_rm.core.optim import build_optimizer
from megatron_rm.loading.models import BUILDERS, Found, load_weights


@dataclass
class Trained:
    """A trained model of the run: its DDP wrapper (what the schedule runs) and its state (the
    module, optimizer and scheduler, as checkpoints take them)."""

    ddp: torch.nn.Module
    state: ModelState

    @property
    def module(self) -> torch.nn.Module:
        return self.state.module

    @property
    def optimizer(self):
        return self.state.optimizer

    @property
    def scheduler(self):
        return self.state.scheduler


def build_trainable(kind: str, config: ModelConfig, parallel: ParallelConfig, tokenizer_size: int,
                    optim: OptimizerConfig, total_steps: int, *, precision: str, recompute: str = "none",
                    use_distributed_optimizer: bool = False, weights: Found | None = None) -> Trained:
    """A `kind` (reward or policy) model of `config` with its optimizer and a schedule of
    `total_steps`, starting from `weights` (None: random, or a checkpoint restored afterwards)."""
    module = BUILDERS[kind](config, parallel, tokenizer_size, precision=precision, recompute=recompute)
    if weights is not None:
        load_weights(weights, module)
    ddp, optimizer, scheduler = build_optimizer(module, optim, total_steps, precision=precision,
                                                use_distributed_optimizer=use_distributed_optimizer)
    state = ModelState(module, config, padded_vocab_size(tokenizer_size, config), optimizer, scheduler, kind=kind)
    return Trained(ddp, state)
