"""The Hydra edge: register the typed schema, turn a composed config into dataclasses."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from megatron_rm import checkpoint_files
from megatron_rm.config import ModelConfig, RMConfig
from megatron_rm.errors import UsageError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def register_schema() -> None:
    """Make `rm_config` (the RMConfig dataclass) available to conf/*.yaml defaults lists."""
    ConfigStore.instance().store(name="rm_config", node=RMConfig)


def to_config(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> RMConfig:
    """The typed config; with `checkpoint.load`, the model is the checkpoint's.

    A checkpoint carries its architecture and tokenizer, so `checkpoint.load=DIR`
    needs no model override; `model.<key>=value` among the command line's
    `overrides` still applies on top (dropout, say; an architecture change is
    refused when the weights load).
    """
    config = OmegaConf.to_object(cfg)
    if config.checkpoint.load:
        config.model = checkpoint_model(config.checkpoint.load, overrides)
    return config


def checkpoint_model(path: str, overrides) -> ModelConfig:
    chosen = [o for o in overrides if o.split("=")[0].lstrip("+~") == "model"]
    if chosen:
        raise UsageError(f"{chosen[0]} with checkpoint.load={path}: the checkpoint carries its model; "
                         "change single fields with model.<key>=value")
    directory = checkpoint_files.resolve(path)
    model = OmegaConf.structured(checkpoint_files.model_config(directory, checkpoint_files.read_metadata(directory)))
    fields = [o.split(".", 1)[1] for o in overrides if o.startswith("model.")]
    return OmegaConf.to_object(OmegaConf.merge(model, OmegaConf.from_dotlist(fields)))


def exit_on_usage_error(run, rank: int) -> None:
    """Call `run()`; a UsageError (the same on every rank) is printed once, by rank 0,
    without a traceback, and every rank exits with status 2."""
    try:
        run()
    except UsageError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
