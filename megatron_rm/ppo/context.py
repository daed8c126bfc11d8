"""What every step of a run uses (`ppo.trainer.build_context` builds it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_rm.core.optim import SkipGuard
from megatron_rm.generation.engine import Engine
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.ppo.kl import FixedKLController
from megatron_rm.ppo.models import PPOModels
from megatron_rm.ppo.reward_sources import RewardSources
from megatron_rm.runtime.parallel import Layout


@dataclass
class Context:
    """What every step of a run uses."""

    cfg: PPOConfig
    models: PPOModels
    engine: Engine
    rewards: RewardSources
    controller: FixedKLController
    guards: dict[str, SkipGuard] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.models.layout

    @property
    def vocab_size(self) -> int:
        return self.models.vocab_size
