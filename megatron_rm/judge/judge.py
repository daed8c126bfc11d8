"""The verdict of a policy on judging prompts, at any TP/PP/DP.

For each prompt the policy's next-token log-probabilities of the two label tokens are read at
the prompt's last position (`vocab_parallel.token_logprobs`: no vocabulary gather across TP);
p(A) = softmax over those two logits = sigmoid(log p(A) - log p(B)), the verdict at
temperature 0 with nothing sampled or parsed. A pair is judged in both orders and
preference = 1/2 (p(A | first shown as A) + p(B | first shown as B)), so a judge that favours a
label or a position gives a pair and its swap preferences that add up to 1.

`Judge.label_logprobs` is collective like `Scorer.score`: the prompts are planned into
length-grouped micro-batches (`core.micro_batches`), dealt to the data-parallel replicas, run
forward-only through megatron's schedule, and summed back over the data-parallel group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.core.micro_batches import BATCHINGS, deal, plan
from megatron_rm.core.schedule import collect
from megatron_rm.data import document_batch, pad_id
from megatron_rm.data.rows import RowProblem
from megatron_rm.data.sources import RawRow
from megatron_rm.errors import ConfigError
from megatron_rm.judge.pairs import Pair, parse_pair
from megatron_rm.judge.prompt import DEFAULT_LABELS, DEFAULT_TEMPLATE, JudgePrompt
from megatron_rm.loading.models import LoadedPolicy
from megatron_rm.model.inputs import document_ends
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.scoring.scorer import DEFAULT_MAX_TOKENS


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any finite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Verdict:
    """How likely the pair's first answer (chosen / response_a) is the better one."""

    as_a: float
    """p(A) with the first answer shown as A."""
    as_b: float
    """p(B) with the first answer shown as B."""
    label_mass: float
    """p(A) + p(B) over the whole vocabulary, mean of both orders: how much the judge answers
    with a label at all (near 0: the verdict means little)."""

    @property
    def preference(self) -> float:
        return 0.5 * (self.as_a + self.as_b)


def verdict(first_as_a: list[float], first_as_b: list[float]) -> Verdict:
    """The verdict from [log p(A), log p(B)] of the two orders' prompts."""
    mass = sum(math.exp(value) for value in (*first_as_a, *first_as_b)) / 2
    return Verdict(sigmoid(first_as_a[0] - first_as_a[1]), sigmoid(first_as_b[1] - first_as_b[0]), mass)


class Judge:
    """A policy reading verdicts off judging prompts made with its own tokenizer; every rank holds one."""

    def __init__(self, policy: LoadedPolicy, *, template: str = DEFAULT_TEMPLATE,
                 labels: tuple[str, str] = DEFAULT_LABELS, max_tokens: int = DEFAULT_MAX_TOKENS,
                 batching: str = "bucket", max_length: int | None = None):
        limit = policy.config.max_sequence_length
        problems = [f"max_tokens={max_tokens} must be >= 1"] if max_tokens < 1 else []
        if batching not in BATCHINGS:
            problems.append(f"batching={batching!r} must be one of {', '.join(BATCHINGS)}")
        if max_length is not None and not 1 <= max_length <= limit:
            problems.append(f"max_length={max_length} must be in [1, {limit}] (the model's max_sequence_length)")
        if problems:
            raise ConfigError("invalid judge settings:\n  " + "\n  ".join(problems))
        self.prompt = JudgePrompt(policy.tokenizer, template, labels)
        self.policy, self.max_tokens, self.batching = policy, max_tokens, batching
        self.max_length = max_length or limit
        self._pad_id = pad_id(policy.tokenizer)

    def documents(self, raws: list[RawRow]) -> list[list[list[int]] | RowProblem]:
        """Per row: its two judging prompts' ids (first answer as A, then as B), or its problem."""
        parsed = [parse_pair(raw) for raw in raws]
        pairs = [pair for pair in parsed if isinstance(pair, Pair)]
        encoded = iter(self.prompt.encode(pairs))
        out = []
        for raw, pair in zip(raws, parsed):
            if not isinstance(pair, Pair):
                out.append(pair)
                continue
            ids = [next(encoded), next(encoded)]
            longest = max(map(len, ids))
            out.append(ids if longest <= self.max_length else RowProblem(
                raw.location, None, "too_long", f"its judging prompt is {longest} tokens, over max_length="
                                                f"{self.max_length}; a judge does not cut its prompts"))
        return out

    @torch.no_grad()
    def label_logprobs(self, sequences: list[list[int]]) -> torch.Tensor:
        """(len(sequences), 2) fp32 [log p(A), log p(B)] of the token after each sequence, on the
        CPU of every rank, in input order. Collective: every rank passes the same `sequences`."""
        layout = self.policy.layout
        found = torch.zeros(len(sequences), 2, dtype=torch.float32, device=runtime.device())
        lengths = [len(ids) for ids in sequences]
        mine = deal(plan(lengths, self.max_tokens, self.batching), lengths, layout.dp)[layout.dp_rank]
        batches = [document_batch([sequences[i] for i in batch], self._pad_id, packed=self.batching == "pack")
                   for batch in mine]
        if batches:
            local = collect(self.policy.chunks, batches, self._forward, layout,
                            shape=lambda batch: (batch.num_documents, 2), dtype=torch.float32)
            order = torch.tensor([i for batch in mine for i in batch], device=found.device)
            found[order] = torch.cat(local).to(found.device)
        if layout.dp > 1:  # each row was computed by one replica; the others hold zeros there
            dist.all_reduce(found, group=layout.groups.dp)
        return found.cpu()

    def _forward(self, model, batch) -> torch.Tensor:
        logits = forward_logits(model, batch)
        if not self.policy.layout.is_last_stage:
            return logits  # activations for the next stage
        last = logits[document_ends(batch.attention_mask)]  # (documents, vocab shard): each prompt's end
        targets = [torch.full(last.shape[:1], token, device=last.device) for token in self.prompt.label_ids]
        return torch.stack([token_logprobs(last, target, self.policy.vocab_size) for target in targets], -1)
