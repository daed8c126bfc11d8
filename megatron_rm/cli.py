"""The Hydra edge: the tools' entry point, the typed schema, a composed config turned into dataclasses."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from megatron_rm.config import ModelConfig, RMConfig, SFTConfig
from megatron_rm.core import checkpoint_files
from megatron_rm.errors import UsageError, exit_on_usage_error
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.runtime import parallel
from megatron_rm.training.resume import start_metadata, start_source

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def hydra_main(config_name: str, run: Callable[[DictConfig, Sequence[str]], object]) -> Callable[[], None]:
    """A tool's `main`: `run(cfg, overrides)` on conf/<config_name>.yaml composed with the command
    line's `key=value` overrides (also passed as given). A UsageError is printed once, by rank 0,
    and exits with status 2; the process group is shut down however the run ends."""
    register_schema()

    # Hydra names the job after the file of the function it is given, unwrapping it: wrapping the
    # tool's own `run` keeps its name ("train_rm is powered by Hydra" in --help).
    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    @functools.wraps(run)
    def main(cfg: DictConfig) -> None:
        try:
            overrides = HydraConfig.get().overrides.task
            exit_on_usage_error(lambda: run(cfg, overrides), rank=int(os.environ.get("RANK", "0")))
        finally:
            parallel.shutdown()

    return main


def register_schema() -> None:
    """Make `rm_config`, `sft_config` and `ppo_config` (the RMConfig, SFTConfig and PPOConfig
    dataclasses) available to conf/*.yaml defaults lists."""
    ConfigStore.instance().store(name="rm_config", node=RMConfig)
    ConfigStore.instance().store(name="sft_config", node=SFTConfig)
    ConfigStore.instance().store(name="ppo_config", node=PPOConfig)


def to_config(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> RMConfig:
    """The typed config; starting from a checkpoint, the model is the checkpoint's.

    A checkpoint carries its architecture and tokenizer, so `checkpoint.load=DIR` or
    `checkpoint.init=DIR` needs no model override; `model.<key>=value` among the command
    line's `overrides` still applies on top (dropout, say; an architecture change is
    refused when the weights load).
    """
    config = OmegaConf.to_object(cfg)
    source = start_source(config.checkpoint, config.run.dir)
    if source is not None:
        config.model = checkpoint_model(source, config.checkpoint.load == "auto", overrides)
    return config


def checkpoint_model(source, auto: bool, overrides) -> ModelConfig:
    chosen = [o for o in overrides if o.split("=")[0].lstrip("+~") == "model"]
    # A requeued job repeats its first command line, recipe included: with auto the
    # recipe made the checkpoint, which now speaks for it.
    if chosen and not auto:
        raise UsageError(f"{chosen[0]} with a checkpoint to start from ({source.candidates[0]}): the checkpoint "
                         "carries its model; change single fields with model.<key>=value")
    directory, metadata = start_metadata(source, _warn)
    model = OmegaConf.structured(checkpoint_files.model_config(directory, metadata))
    fields = [o.split(".", 1)[1] for o in overrides if o.startswith("model.")]
    return OmegaConf.to_object(OmegaConf.merge(model, OmegaConf.from_dotlist(fields)))


def _warn(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)
