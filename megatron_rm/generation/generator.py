"""Batched, KV-cached generation with a megatron policy at any TP/PP, on CPU or GPU.

The KV cache is megatron-core's own: a `StaticInferenceContext` makes every attention layer
keep its keys and values (`Attention._adjust_key_value_for_inference`), and the model
computes logits for each row's last position only. Around it the loop here does what
megatron's text-generation controller does, without what ties that controller to CUDA
(a CUDA generator built in its constructor, CUDA buffers for pipeline stages) and with a
generator per row (see `sampling`).

Prompts of different lengths are left-padded to the longest; the prompt is run once
(prefill), then one token per step (decode). Rows with the same prompt (a GRPO group, or any
repeated prompt) share one prefill: each distinct prompt runs once and its keys and values
are copied to its rows before the first token is drawn, as vLLM's prefix cache shares them.
A row's padding is blocked from every query by the attention mask; rotary positions count
from the padded start, which changes no score (rotary attention depends on distances only).
Finished rows stay in the batch until every row has finished or `max_new_tokens` is reached.
On the CPU the forwards run inside `linear.sampling_products` (oneDNN's products).

Collective over the model-parallel group: every TP/PP rank of a data-parallel replica calls
`generate` with the same prompts. The last stage gathers each step's logits across TP
(one position per row; megatron's inference path does) and broadcasts them to the other stages, so every rank draws the
same tokens; replicas work on their own prompts with no collective between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_rm import runtime
from megatron_rm.core.schedule import collect
from megatron_rm.errors import ConfigError
from megatron_rm.generation.sampling import SamplingParams, choose, row_generator
from megatron_rm.model.document_model import unwrap
from megatron_rm.model.inputs import causal_padding_mask, position_ids
from megatron_rm.model.linear import sampling_products
from megatron_rm.runtime.parallel import Layout

EOS, LENGTH = "eos", "length"


@dataclass
class Completion:
    """One sampled response: its tokens (ending in the stop token when it stopped), each
    token's log-probability, and why it ended (`eos` or `length`)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str

    @property
    def response_ids(self) -> list[int]:
        """The response's tokens without the stop token that ended it."""
        return self.token_ids[:-1] if self.finish_reason == EOS else self.token_ids


@dataclass
class _Step:
    """One forward of the loop, in the shape megatron's schedule hands to a forward call."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    blocked: torch.Tensor
    """(rows, 1, new, cached + new) True where a query may not attend."""

    def to(self, device) -> _Step:
        return _Step(self.input_ids.to(device), self.position_ids.to(device), self.blocked.to(device))


class Generator:
    """Samples responses from `chunks` (this rank's stage of a PolicyModel, in eval mode)."""

    def __init__(self, chunks: list[torch.nn.Module], layout: Layout, *, vocab_size: int,
                 max_sequence_length: int, eos_token_ids: tuple[int, ...]):
        for chunk in chunks:
            if unwrap(chunk).inputs.packs_sequences:
                raise ConfigError("generation runs on the sdpa or local layer spec (model.transformer_impl); "
                                  "the TransformerEngine spec takes packed thd batches, which a KV cache does not")
        self.chunks, self.layout = chunks, layout
        self.vocab_size, self.max_sequence_length = vocab_size, max_sequence_length
        self.eos_token_ids = tuple(eos_token_ids)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[tuple[int, int]]) -> \
            list[Completion]:
        """A completion of each prompt, all of them non-empty and fitting the model with
        `params.max_new_tokens` (`Engine.generate` checks). `seeds[i]` = (run seed, the row's
        index in the whole input) makes row i's draws (see `sampling.row_generator`)."""
        longest = max(len(ids) for ids in prompts)
        device = runtime.device()
        rows = len(prompts)
        distinct: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its index among them
        shared = torch.tensor([distinct.setdefault(tuple(ids), len(distinct)) for ids in prompts], device=device)
        pads = torch.tensor([longest - len(ids) for ids in prompts], device=device)
        generators = [row_generator(seed, row, device) for seed, row in seeds]
        stops = torch.tensor(sorted(set(self.eos_token_ids) | set(params.stop_token_ids)), device=device)
        context = StaticInferenceContext(len(distinct), longest + params.max_new_tokens)
        step = _prefill(list(distinct), longest, device)
        new = torch.zeros(rows, params.max_new_tokens, dtype=torch.long, device=device)
        logprobs = torch.zeros(rows, params.max_new_tokens, device=device)
        padding = (torch.arange(longest + params.max_new_tokens, device=device)[None, :] < pads[:, None])[:, None, None]
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        finished_at = torch.full((rows,), params.max_new_tokens, device=device)
        for position in range(params.max_new_tokens):
            with sampling_products():  # oneDNN's products on the CPU (model/linear.py)
                logits = self._forward(step, context)
            if position == 0 and len(distinct) < rows:
                logits = logits[shared]
                _copy_cache_rows(context, shared)
            context.sequence_len_offset += step.input_ids.shape[1]
            chosen, chosen_logprobs = choose(logits, params, generators)
            new[:, position], logprobs[:, position] = chosen, chosen_logprobs
            stopped = ~done & torch.isin(chosen, stops)
            finished_at[stopped] = position + 1
            done |= stopped
            if bool(done.all()):
                break
            width = longest + position + 1
            step = _Step(chosen[:, None], (width - 1 - pads)[:, None], padding[..., :width])
        return [Completion(new[row, :int(end)].tolist(), logprobs[row, :int(end)].tolist(),
                           EOS if done[row] else LENGTH)
                for row, end in enumerate(finished_at.tolist())]

    def _forward(self, step: _Step, context: StaticInferenceContext) -> torch.Tensor:
        """(rows, vocab_size) fp32 logits of each row's last position, on every rank."""
        def forward(model, batch: _Step) -> torch.Tensor:
            output = model(batch.input_ids, batch.position_ids, batch.blocked, inference_context=context)
            if not self.layout.is_last_stage:
                return output  # activations for the next stage
            return output[:, -1, :self.vocab_size].float()  # padding columns cut off

        if self.layout.pp == 1:
            return forward(self.chunks[0], step)
        rows = step.input_ids.shape[0]
        return collect(self.chunks, [step], forward, self.layout, shape=lambda _: (rows, self.vocab_size),
                       dtype=torch.float32)[0]


def _prefill(prompts: list[tuple[int, ...]], longest: int, device) -> _Step:
    """The prompts as a left-padded document batch: training's positions and block-causal mask."""
    pads = torch.tensor([longest - len(ids) for ids in prompts], device=device)
    tokens = torch.tensor([[0] * (longest - len(ids)) + list(ids) for ids in prompts], device=device)
    prompt_mask = (torch.arange(longest, device=device)[None, :] >= pads[:, None]).long()
    return _Step(tokens, position_ids(prompt_mask), causal_padding_mask(prompt_mask))


def _copy_cache_rows(context: StaticInferenceContext, rows: torch.Tensor) -> None:
    """Each layer's cached keys and values (sequence, batch, ...) gathered to one batch row
    per entry of `rows` (megatron's `swap_key_value_dict` keeps the batch size; this grows it)."""
    for layer, (keys, values) in context.key_value_memory_dict.items():
        context.key_value_memory_dict[layer] = (keys[:, rows], values[:, rows])
    context.max_batch_size = len(rows)


def response_text(tokenizer, completion: Completion) -> str:
    """The response as text, without the stop token that ended it."""
    return tokenizer.decode(completion.response_ids)
