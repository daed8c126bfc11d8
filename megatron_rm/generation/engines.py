"""The engine a loop or tool names (`rollout.engine`, `--engine`): checked before any process
group starts (`engine_problems`), then built on the job (`build_engine`)."""

from __future__ import annotations

import torch

from megatron_rm.config import ModelConfig
from megatron_rm.generation.engine import ENGINES, Engine, MegatronEngine
from megatron_rm.generation.generator import Generator
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.runtime.parallel import Layout


def engine_problems(name: str, model: ModelConfig, params: SamplingParams | None = None, *, cuda: bool,
                    key: str = "rollout.engine") -> list[str]:
    """Why engine `name` (set by `key`) cannot sample from `model` with `params`."""
    if name not in ENGINES:
        return [f"{key}={name!r} must be one of {', '.join(ENGINES)}"]
    if name == "vllm":
        from megatron_rm.generation.vllm_engine import vllm_problems
        return [f"{key}=vllm: {problem}" for problem in vllm_problems(model, params, cuda=cuda)]
    return []


def build_engine(name: str, chunks: list[torch.nn.Module], layout: Layout, model: ModelConfig, *, vocab_size: int,
                 eos_token_ids: tuple[int, ...], dtype: torch.dtype, cuda: bool, version: int = 0) -> Engine:
    """Engine `name` for the policy whose shards `chunks` hold on this rank (collective over the
    job), holding weights of `version`; a vllm engine starts with none: load them
    (`Engine.load_weights`) before sampling."""
    if name == "vllm":
        from megatron_rm.generation.vllm_engine import VllmEngine
        return VllmEngine(model, layout, vocab_size=vocab_size, dtype=dtype, eos_token_ids=eos_token_ids, cuda=cuda)
    generator = Generator(chunks, layout, vocab_size=vocab_size, max_sequence_length=model.max_sequence_length,
                          eos_token_ids=eos_token_ids)
    return MegatronEngine(generator, version)
