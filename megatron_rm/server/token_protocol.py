"""The wire side of a token-head reward server (outcome and process reward models): requests
as located responses (`token_scores`), and the answers built from per-token logits.

- vLLM's `POST /pooling` with `"task": "token_classify"`: per input, one row of class
  probabilities per token (`[p_wrong, p_right]`, or three with a neutral class).
- Sequence-level answers (`/classify`, `/pooling` with task classify, `/get_reward`): the
  response's reward, the aggregate of its positive-class probabilities. Whole strings carry
  no prompt boundary, so every token of them counts; `messages` aggregate over the final
  message.
- `POST /score`, native `items` (a `response` that is a list of strings is a list of steps)
  or vLLM's score shape `{"queries", "documents"}` whose documents may be lists of steps,
  answering per document its score and step scores.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, StrictStr

from megatron_rm.data.rows import Invalid, RowKeys
from megatron_rm.data.sources import RawRow
from megatron_rm.data.steps import LabelledSteps, parse_outcome
from megatron_rm.data.tokenize import blank
from megatron_rm.errors import DataError
from megatron_rm.scoring.inputs import InputEncoder
from megatron_rm.scoring.token.scores import Located, TokenReading, checked, locate, parse_response, read
from megatron_rm.server.protocol import RequestProblem, ScoreItem, _Request, listing, request_problem, within

TOKEN_CLASSIFY_TASK = "token_classify"


class TokenScoreRequest(_Request):
    """`/score` for a token head: native `items`, or vLLM's `queries` + `documents`."""

    model: StrictStr | None = None
    """Accepted and not checked, as for /classify."""
    items: list[ScoreItem] | None = Field(default=None, min_length=1)
    queries: StrictStr | list[StrictStr] | None = None
    """The prompt of every document, or one per document; absent: no prompt."""
    documents: list[Any] | None = Field(default=None, min_length=1)
    """Each a text (an outcome) or a list of steps."""

    @property
    def native(self) -> bool:
        if (self.items is None) == (self.documents is None):
            raise RequestProblem(422, "give 'items' (native) or 'documents' (with 'queries'), exactly one of them",
                                 "items")
        if self.items is not None and self.queries is not None:
            raise RequestProblem(422, "queries: goes with 'documents'; an item has its own 'prompt'", "queries")
        return self.items is not None

    def responses(self, reading: TokenReading, max_items: int) -> tuple[list[LabelledSteps], list[str]]:
        """The responses, and the field each one is (for errors)."""
        if self.native:
            within(len(self.items), max_items, "items")
            wheres = [f"items[{index}]" for index in range(len(self.items))]
            parsed = [_item(item, where, reading) for item, where in zip(self.items, wheres)]
            return parsed, [f"{where}.{'messages' if item.messages is not None else 'response'}"
                            for item, where in zip(self.items, wheres)]
        within(len(self.documents), max_items, "documents")
        many = isinstance(self.queries, list)
        if many and len(self.queries) != len(self.documents):
            raise RequestProblem(422, f"queries: {len(self.queries)} queries for {len(self.documents)} documents; "
                                      "give one query, or one per document", "queries")
        queries = self.queries if many else [self.queries] * len(self.documents)
        names = [f"documents[{index}]" for index in range(len(self.documents))]
        prompt_names = [f"queries[{index}]" if many else "queries" for index in range(len(self.documents))]
        return [_parsed("", parse_response, reading, "", query, document, name, prompt_name)
                for query, document, name, prompt_name in zip(queries, self.documents, names, prompt_names)], names


def _item(item: ScoreItem, where: str, reading: TokenReading) -> LabelledSteps:
    """A native item: `messages`, or `prompt` + `response` (a text, or a list of steps)."""
    if item.is_conversation(where):
        raw = RawRow(where, {"messages": item.messages})
        return _parsed(where, lambda: checked(parse_outcome(raw, RowKeys(), reading.labelling, scoring=True)))
    # Absolute field names, so that a step's problem names `items[i].response[j]` wherever it is found.
    return _parsed("", parse_response, reading, where, item.prompt, item.response, f"{where}.response",
                   f"{where}.prompt")


def outcome(prompt, response, name: str) -> LabelledSteps:
    """A (prompt, response) the sequence-level requests give (already validated), as an outcome."""
    if blank(response):
        raise RequestProblem(422, f"{name}: empty response: nothing to score", name)
    return LabelledSteps(prompt, (response,), None, "", name, (name,), outcome=True)


def _parsed(where: str, parse, *args) -> LabelledSteps:
    """`parse(*args)`, its problem a 422 naming the field under `where`."""
    try:
        return parse(*args)
    except Invalid as invalid:
        raise request_problem(where, invalid.field, invalid.message, invalid.reason) from None


def located(encoder: InputEncoder, responses: list[LabelledSteps], names: list[str]) -> list[Located]:
    """The responses as ids and read positions; a 422 naming the first that cannot be scored
    (too long, or a step whose end has no token of its own)."""
    out = []
    for response, name in zip(responses, names):
        try:
            out.append(locate(encoder, response, name))
        except Invalid as invalid:
            raise request_problem("", invalid.field or name, invalid.message, invalid.reason) from None
        except DataError as error:  # e.g. messages for a tokenizer without a chat template
            raise RequestProblem(422, f"{name}: {error}", name) from None
    return out


def rewards(logits: list[torch.Tensor], responses: list[Located], reading: TokenReading) -> list[tuple]:
    """(reward, step rewards or None) per response."""
    return [read(one, response, reading) for one, response in zip(logits, responses)]


def token_probabilities(logits: list[torch.Tensor], activation: bool) -> list[list[list[float]]]:
    """vLLM's token_classify: per input, a row per token (softmax over classes, or raw logits)."""
    return [(one.softmax(-1) if activation else one).tolist() for one in logits]


def as_classes(reward: float) -> list[float]:
    """A reward (a probability of being right) as vLLM's class probabilities: [wrong, right]."""
    return [1.0 - reward, reward]


def classify_response(model: str, scored: list[tuple], sequences: list[list[int]]) -> dict:
    data = [{"index": index, "label": f"LABEL_{int(reward > 0.5)}", "probs": as_classes(reward), "num_classes": 2}
            for index, (reward, _) in enumerate(scored)]
    return listing("classify", model, data, sequences)


def pooling_response(model: str, data: list, sequences: list[list[int]]) -> dict:
    items = [{"index": index, "object": "pooling", "data": one} for index, one in enumerate(data)]
    return listing("pool", model, items, sequences)


def score_response(scored: list[tuple], responses: list[Located]) -> dict:
    """The native answer: the sequence server's fields, and each response's step rewards."""
    return {"rewards": [reward for reward, _ in scored], "step_rewards": [steps for _, steps in scored],
            "rewards_normalized": None, "truncated": [response.truncated for response in responses]}


def vllm_score_response(model: str, scored: list[tuple], sequences: list[list[int]]) -> dict:
    data = [{"index": index, "object": "score", "score": reward, "step_scores": steps}
            for index, (reward, steps) in enumerate(scored)]
    return listing("score", model, data, sequences)
