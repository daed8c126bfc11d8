"""A reward model ready to score, at this job's TP/PP layout: from one of our checkpoints
(converted or trained) or straight from a Hugging Face folder, converted in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from transformers import PreTrainedTokenizerBase

from megatron_rm import parallel, runtime
from megatron_rm.config import ModelConfig, ParallelConfig, layout_problems
from megatron_rm.convert import megatron_io
from megatron_rm.convert.hf_to_megatron import is_hf_folder, open_hf
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import model_entry, read_metadata, resolve
from megatron_rm.data import load_tokenizer
from megatron_rm.errors import CheckpointError, ConfigError
from megatron_rm.model import build_reward_model
from megatron_rm.parallel import Layout

PRECISIONS = ("fp32", "bf16")


@dataclass
class Normalization:
    """Per-label reward mean and std of an evaluation set, stored with the model."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, stored: dict | None, num_labels: int, where: str) -> Normalization | None:
        if not stored:
            return None
        mean = torch.tensor(stored.get("mean"), dtype=torch.float32).reshape(-1)
        std = torch.tensor(stored.get("std"), dtype=torch.float32).reshape(-1)
        if mean.numel() != num_labels or std.numel() != num_labels:
            raise CheckpointError(f"{where}: reward_normalization holds {mean.numel()} mean(s) and "
                                  f"{std.numel()} std(s) for a model of {num_labels} label(s)")
        # A constant reward on the eval set would divide by zero; OpenRLHF clamps the same way.
        return cls(mean, std.clamp(min=1e-8))

    def apply(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.mean) / self.std


@dataclass
class ScoringModel:
    chunks: list[torch.nn.Module]
    """This rank's pipeline stage, in eval mode."""
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase
    layout: Layout
    normalization: Normalization | None
    name: str
    """What clients call the model (the path it was loaded from)."""

    @property
    def num_labels(self) -> int:
        return self.config.num_labels


def load_model(path: str | Path, parallel_config: ParallelConfig | None = None, *,
               precision: str = "fp32", model_name: str | None = None, seed: int = 0) -> ScoringModel:
    """The model at `path` on this job (process groups are created here when absent).

    `path`: a Hugging Face folder (`*ForSequenceClassification`, or `*ForCausalLM` with a new
    head drawn from `seed`), a checkpoint folder, or a run's `checkpoints/` folder (its newest
    complete checkpoint). `model_name` picks one model of a checkpoint that holds several.
    """
    path, parallel_config = Path(path), parallel_config or ParallelConfig()
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    hf = is_hf_folder(path)
    if hf:
        source = open_hf(path, seed=seed)
        config, tokenizer = source.model, source.tokenizer
        stored_normalization, where = source.reward_normalization(), path / "config.json"
    else:
        directory = resolve(path)
        metadata = read_metadata(directory)
        entry = model_entry(directory, metadata, model_name)
        config, tokenizer = entry.config, load_tokenizer(entry.config.tokenizer)
        stored_normalization, where = metadata.get("reward_normalization"), directory
    layout = _layout(parallel_config, config, len(tokenizer), precision, seed)
    model = build_reward_model(config, parallel_config, len(tokenizer), precision=precision)
    if hf:
        megatron_io.load_whole(model, source.tensors())
    else:
        state = checkpoint.ModelState(model, config, entry.padded_vocab_size, dtype=entry.dtype)
        checkpoint.load(directory, {model_name or "model": state},
                        sources={model_name or "model": model_name})
    model.eval()
    return ScoringModel([model], config, tokenizer, layout, Normalization.of(stored_normalization,
                                                                              config.num_labels, str(where)),
                        name=str(path))


def _layout(parallel_config: ParallelConfig, config: ModelConfig, vocab_size: int, precision: str,
            seed: int) -> Layout:
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
