"""How the next token is chosen from one position's logits.

Greedy (`temperature=0`) takes the argmax. Otherwise the logits are divided by the
temperature, cut by top-k and then top-p (nucleus) as `transformers` does, and one token
is drawn from what is left with the row's own random generator, so that a row samples
the same tokens alone or in any batch, at any TP/PP or data-parallel layout.

The log-probability reported for a token is log softmax(logits / temperature) over the
whole vocabulary (temperature 1 for greedy): the distribution before top-k / top-p, the one
a teacher-forced forward computes (`vocab_parallel.token_logprobs`) and a PPO ratio divides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    """0: greedy."""
    top_k: int = 0
    """Keep the k most likely tokens; 0: all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p; 1: all."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end a response besides the tokenizer's EOS (kept in the response)."""

    def problems(self) -> list[str]:
        found = []
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not self.temperature >= 0:
            found.append(f"temperature={self.temperature} must be >= 0 (0: greedy)")
        if self.top_k < 0:
            found.append(f"top_k={self.top_k} must be >= 0 (0: no limit)")
        if not 0 < self.top_p <= 1:
            found.append(f"top_p={self.top_p} must be in (0, 1]")
        return found

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the reported log-probabilities are taken at."""
        return 1.0 if self.greedy else self.temperature


def filtered(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(rows, vocab) logits with what top-k, then top-p, removes set to -inf (at least one kept)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        ordered, order = logits.sort(dim=-1)  # ascending: the tail to remove comes first
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return logits


def choose(logits: torch.Tensor, params: SamplingParams,
           generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of each row and its log-probability, from (rows, vocab) fp32 logits."""
    logprobs = (logits / params.logprob_temperature).log_softmax(-1)
    if params.greedy:
        tokens = logits.argmax(-1)
    else:
        probs = filtered(logits / params.temperature, params.top_k, params.top_p).softmax(-1)
        tokens = torch.stack([torch.multinomial(row, 1, generator=generator)[0]
                              for row, generator in zip(probs, generators)])
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def row_seed(seed: int, row: int) -> int:
    """The seed of one (prompt, sample) row: a function of the run's seed and the row's index in
    the whole input only, whatever batch, rank or engine the row lands on."""
    return (seed * 0x9E3779B97F4A7C15 + row * 0xBF58476D1CE4E5B9 + 1) % 2**63


def row_generator(seed: int, row: int, device: torch.device) -> torch.Generator:
    """The generator of one (prompt, sample) row (`row_seed`)."""
    return torch.Generator(device=device).manual_seed(row_seed(seed, row))
