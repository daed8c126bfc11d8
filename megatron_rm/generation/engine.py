"""The one seam between the loops (PPO, GRPO, `tools/generate.py`) and what samples responses.

An engine generates from prompt ids with sampling settings and a seed per response, and
returns each response's token ids, each token's log-probability and a finish reason
(`generator.Completion`). It holds weights of a version: `load_weights` takes new ones (an
iterator of Hugging Face names and whole tensors, `convert.weight_stream.hf_weights`) with
their version, and `generate(..., version=v)` refuses to sample from weights of another
version, so a rollout can never come from a policy the trainer has moved past.

- `megatron` (the default): the actor's own chunks through megatron's KV cache
  (`generator.Generator`). It reads the live parameters, so new weights need no copy: the stream
  it is handed is never iterated (and so no collective runs), and only the version moves.
- `vllm`: vLLM, on the first rank of each data-parallel replica (`vllm_engine`).

Collective over the model-parallel group: every TP/PP rank of a replica calls `generate` and
`load_weights` with the same arguments.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from megatron_rm.generation.generator import Completion, Generator
from megatron_rm.generation.sampling import SamplingParams

ENGINES = ("megatron", "vllm")


class StaleWeights(RuntimeError):
    """An engine was asked to sample from weights of a version it does not hold."""


class Engine:
    name = ""
    schedules_itself = False
    """True: it batches (and pads) prompts itself, and takes them all at once."""

    def __init__(self, max_sequence_length: int, version: int | None = 0):
        self.max_sequence_length = max_sequence_length
        """Prompt and response tokens together: the policy's context."""
        self.version = version
        """The version of the weights it holds; None: none yet."""

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[tuple[int, int]], *,
                 version: int | None = None) -> list[Completion]:
        """A completion of each prompt; `seeds[i]` = (run seed, the row's index in the whole input)
        makes row i's draws. `version`: the weights' version the caller expects (None: any).
        What no engine can generate is refused here, what one engine cannot by `_problems`."""
        if version is not None and version != self.version:
            held = "no weights" if self.version is None else f"weights of version {self.version}"
            raise StaleWeights(f"the {self.name} engine holds {held}, but version {version} was asked for: load "
                               "the policy's weights into it first")
        problems = params.problems() + self._problems(params)
        longest = max((len(ids) for ids in prompts), default=0)
        if longest + params.max_new_tokens > self.max_sequence_length:
            problems.append(f"a prompt of {longest} tokens + max_new_tokens={params.max_new_tokens} exceeds "
                            f"the model's max_sequence_length={self.max_sequence_length}")
        if any(not ids for ids in prompts):
            problems.append("an empty prompt: a response needs at least one token to follow")
        if problems:
            raise ValueError("cannot generate: " + "; ".join(problems))
        return self._generate(prompts, params, seeds) if prompts else []

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Take the policy's weights (Hugging Face names, whole tensors) as version `version`."""
        self._load(weights)
        self.version = version

    def release(self) -> None:
        """Free the engine's memory (its KV cache) while the trainer needs it; a no-op on the CPU."""

    def resume(self) -> None:
        """Take back what `release` freed."""

    def close(self) -> None:
        """Stop the engine (before the process groups it shares a job with)."""

    def _problems(self, params: SamplingParams) -> list[str]:
        """Sampling settings this engine cannot honour (none by default)."""
        return []

    def _generate(self, prompts, params, seeds) -> list[Completion]:
        """Completions of checked, non-empty `prompts`."""
        raise NotImplementedError

    def _load(self, weights) -> None:
        raise NotImplementedError


class MegatronEngine(Engine):
    name = "megatron"

    def __init__(self, generator: Generator, version: int = 0):
        super().__init__(generator.max_sequence_length, version)
        self.generator = generator

    def _generate(self, prompts, params, seeds) -> list[Completion]:
        return self.generator.generate(prompts, params, seeds)

    def _load(self, weights) -> None:
        """Nothing to copy: the generator runs on the trainer's own parameters."""


def generate_batched(engine: Engine, prompts: list[list[int]], numbers: list[int], params: SamplingParams, seed: int,
                     batch_size: int, version: int | None = None) -> list[Completion]:
    """A completion of each prompt (in order), `batch_size` at a time unless the engine schedules
    its own batches; response i draws from (seed, numbers[i]), so it is the same in any batch.
    Prompts of similar length share a batch. `version`: the weights' version the engine must hold."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    if engine.schedules_itself:
        batch_size = max(len(order), 1)
    done: dict[int, Completion] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        completions = engine.generate([prompts[i] for i in batch], params, [(seed, numbers[i]) for i in batch],
                                      version=version)
        done.update(zip(batch, completions))
    return [done[i] for i in range(len(prompts))]
