"""Every reason a reward-model or SFT run cannot start, raised as one error before anything is
built: the fields' own checks (`config.problems`), the model family's conversion table and the
loss's own needs, each kept with the layer that knows it."""

from __future__ import annotations

from megatron_rm.config import REWARD, RMConfig, problems
from megatron_rm.convert.families import family_problems
from megatron_rm.errors import ConfigError
from megatron_rm.objectives import objective_problems


def validate(cfg: RMConfig, world_size: int, *, cuda: bool, te_available: bool, vocab_size: int,
             model_kind: str = REWARD) -> None:
    """Raise ConfigError listing every reason `cfg` cannot run on this launch. `model_kind` is what
    the run trains (reward or policy); a loss that trains the other kind is refused."""
    found = problems(cfg, world_size, cuda=cuda, te_available=te_available, vocab_size=vocab_size)
    found += family_problems(cfg.model)
    found += objective_problems(cfg.loss, cfg.model.num_labels, cfg.data, cfg.parallel, model_kind=model_kind)
    if found:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(found))
