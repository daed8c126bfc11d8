"""A model ready to run at this job's TP/PP layout, from one of our checkpoints (converted or
trained) or straight from a Hugging Face folder converted in memory: what loading a reward
model (scoring) and a policy (generation, RLHF) share, and `load_policy`.

Either source is checked against the kind of model asked for before anything is built: a
reward checkpoint or a `*ForSequenceClassification` folder is not a policy, and a policy
checkpoint is not a reward model; the error names the folder and what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from transformers import PreTrainedTokenizerBase

from megatron_rm import runtime
from megatron_rm.config import POLICY, REWARD, ModelConfig, ParallelConfig, layout_problems
from megatron_rm.convert import megatron_io
from megatron_rm.convert.hf_to_megatron import HFSource, is_hf_folder, open_hf
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import (
    DEFAULT_MODEL,
    ModelEntry,
    model_entry,
    read_metadata,
    require_kind,
    resolve,
)
from megatron_rm.data import load_tokenizer
from megatron_rm.data.tokenize import reward_tokenizer
from megatron_rm.errors import CheckpointError, ConfigError
from megatron_rm.model.factory import build_policy_model, build_reward_model
from megatron_rm.runtime import parallel
from megatron_rm.runtime.parallel import Layout

PRECISIONS = ("fp32", "bf16")
BUILDERS = {REWARD: build_reward_model, POLICY: build_policy_model}


@dataclass
class Found:
    """A model found at a path, checked to be of the kind asked for, nothing built yet."""

    path: Path
    kind: str
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase
    hf: HFSource | None = None
    """The Hugging Face folder's tensors, when `path` is one (converted in memory)."""
    directory: Path | None = None
    """Our checkpoint's folder (a run's `checkpoints/` resolved to its newest complete one)."""
    entry: ModelEntry | None = None
    metadata: dict | None = None
    model_name: str | None = None


def find(path: str | Path, kind: str, *, model_name: str | None = None, seed: int = 0) -> Found:
    """The `kind` (reward or policy) model at `path`: a Hugging Face folder, a checkpoint folder,
    or a run's `checkpoints/` folder; `model_name` picks one model of a checkpoint of several.
    A reward model from a `*ForCausalLM` folder gets a new head drawn from `seed`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if is_hf_folder(path):
        source = open_hf(path, kind=kind, seed=seed)
        return Found(path, kind, source.model, source.tokenizer, hf=source)
    directory = resolve(path)
    metadata = read_metadata(directory)
    entry = model_entry(directory, metadata, model_name)
    require_kind(directory, entry, kind, model_name)
    tokenizer = reward_tokenizer(entry.config) if kind == REWARD else load_tokenizer(entry.config.tokenizer)
    return Found(path, kind, entry.config, tokenizer, directory=directory,
                 entry=entry, metadata=metadata, model_name=model_name)


def build_and_load(found: Found, parallel_config: ParallelConfig, precision: str,
                   seed: int) -> tuple[torch.nn.Module, Layout]:
    """This rank's stage of `found`, its weights loaded (resharded to this layout), in eval mode,
    and the layout (process groups are created here when absent)."""
    layout = job_layout(parallel_config, found.config, len(found.tokenizer), precision, seed)
    module = BUILDERS[found.kind](found.config, parallel_config, len(found.tokenizer), precision=precision)
    load_weights(found, module)
    module.eval()
    return module, layout


def load_weights(found: Found, module: torch.nn.Module) -> None:
    """`found`'s weights into `module` (this rank's stage of a model built from `found.config`)."""
    if found.hf is not None:
        megatron_io.load_whole(module, found.hf.tensors())
        return
    name = found.model_name or DEFAULT_MODEL
    state = checkpoint.ModelState(module, found.config, found.entry.padded_vocab_size,
                                  dtype=found.entry.dtype, kind=found.kind)
    checkpoint.load(found.directory, {name: state}, sources={name: found.model_name})


def job_layout(parallel_config: ParallelConfig, config: ModelConfig, vocab_size: int, precision: str,
               seed: int) -> Layout:
    """This job's layout: the existing process groups (which must be at the TP/PP asked for), or
    new ones after checking that `config` can run at `parallel_config` on this world."""
    if parallel_state.model_parallel_is_initialized():
        layout = parallel.layout()
        if (layout.tp, layout.pp) != (parallel_config.tp, parallel_config.pp):
            raise ConfigError(f"process groups exist at tp={layout.tp} pp={layout.pp}, "
                              f"not the tp={parallel_config.tp} pp={parallel_config.pp} asked for")
        return layout
    parallel.init_distributed()
    problems = layout_problems(config, parallel_config, dist.get_world_size(), vocab_size,
                               cuda=runtime.cuda_available(), te_available=runtime.te_available())
    if precision not in PRECISIONS or (precision == "bf16" and not runtime.cuda_available()):
        problems.append(f"precision={precision!r}: expected fp32, or bf16 on a GPU")
    if problems:
        raise ConfigError("invalid layout:\n  " + "\n  ".join(problems))
    return parallel.initialize(parallel_config, seed)


@dataclass
class LoadedPolicy:
    chunks: list[torch.nn.Module]
    """This rank's pipeline stage (a PolicyModel), in eval mode."""
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase
    layout: Layout
    name: str
    """The path it was loaded from."""

    @property
    def vocab_size(self) -> int:
        """The real vocabulary: logit columns at or past it are padding."""
        return self.config.vocab_size or len(self.tokenizer)


def load_policy(path: str | Path, parallel_config: ParallelConfig | None = None, *, precision: str = "fp32",
                model_name: str | None = None, seed: int = 0) -> LoadedPolicy:
    """The policy at `path` on this job (process groups are created here when absent).

    `path`: a Hugging Face `*ForCausalLM` folder (its `lm_head`, or its embedding when tied, is
    the output layer), a policy checkpoint (converted with `--model-kind policy`, or saved by
    training), or a run's `checkpoints/` folder. A reward model's folder or checkpoint is
    refused. `model_name` picks one model of a checkpoint that holds several.
    """
    parallel_config = parallel_config or ParallelConfig()
    found = find(path, POLICY, model_name=model_name, seed=seed)
    module, layout = build_and_load(found, parallel_config, precision, seed)
    return LoadedPolicy([module], found.config, found.tokenizer, layout, name=str(found.path))
