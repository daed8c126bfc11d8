"""The Hydra edge: register the typed schema, turn a composed config into dataclasses."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from megatron_rm.config import RMConfig
from megatron_rm.errors import UsageError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def register_schema() -> None:
    """Make `rm_config` (the RMConfig dataclass) available to conf/*.yaml defaults lists."""
    ConfigStore.instance().store(name="rm_config", node=RMConfig)


def to_config(cfg: DictConfig) -> RMConfig:
    return OmegaConf.to_object(cfg)


def exit_on_usage_error(run, rank: int) -> None:
    """Call `run()`; a UsageError (the same on every rank) is printed once, by rank 0,
    without a traceback, and every rank exits with status 2."""
    try:
        run()
    except UsageError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
