"""The wire side of the reward server: what each request may hold, what it means as scoring
inputs, and the response and error bodies, for the contracts RLHF frameworks already call.

- OpenRLHF's remote reward model: `POST /get_reward`.
- vLLM's `POST /classify` (what verl's reward loop calls) and `POST /pooling` with task
  classify; vLLM's response shapes, ids and `usage` block.
- OpenAI's model list, and our native `POST /score` (training's row shapes).

Nothing here knows about ranks or batches (that is `serving_loop`), as megatron-core keeps
its typed inference interface apart from its server. Every request model forbids unknown
fields, so a misspelt option is refused rather than silently ignored; the fields accepted
and not used are the documented ones (OpenRLHF's `prompts`/`labels`, vLLM's `model`).
Items are checked with training's own row validation (`data.rows.parse_row`), so a row
that trains is a row that scores, and a problem is named the way training names it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, field_validator

from megatron_rm.data.rows import RowKeys, RowProblem, parse_row
from megatron_rm.data.sources import RawRow
from megatron_rm.scoring.inputs import Encoded, InputEncoder

CLASSIFY_TASK = "classify"
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError", 408: "RequestTimeoutError",
               413: "PayloadTooLargeError", 415: "UnsupportedMediaTypeError", 422: "UnprocessableEntityError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


class RequestProblem(Exception):
    """A request the server refuses: the HTTP status, a message naming the field, and the field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """The one error shape of every endpoint (OpenAI's, which vLLM also answers with)."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param,
                      "code": status}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _VllmRequest(_Request):
    """Fields every vLLM request may carry that change nothing here: accepted, so that a client
    that sends them is served, and not read. `model` is not checked: verl sends its own path to
    the reward model, which need not be the name this server gives it."""

    model: StrictStr | None = None
    user: StrictStr | None = None
    request_id: StrictStr | None = None
    priority: StrictInt = 0


class ScoreItem(_Request):
    """One native item: `prompt` + `response` as a training row has them (strings or message
    lists), or `messages`, one whole conversation whose final message is the response."""

    prompt: Any = None
    response: Any = None
    messages: Any = None

    def texts(self, where: str) -> tuple:
        if not self.is_conversation(where):
            return _parsed(RawRow(where, {"prompt": self.prompt, "response": self.response}), RowKeys())
        return conversation(self.messages, where)

    def is_conversation(self, where: str) -> bool:
        """Whether the item is `messages` (else `prompt` + `response`); a 422 when it is neither or both."""
        if (self.response is None) == (self.messages is None):
            raise RequestProblem(422, f"{where}: give 'response' (with an optional 'prompt') or 'messages', "
                                      "exactly one of them", where)
        if self.messages is not None and self.prompt is not None:
            raise RequestProblem(422, f"{where}.prompt: not allowed with 'messages' (the turns before the "
                                      "final message are the prompt)", f"{where}.prompt")
        return self.messages is not None


class ScoreRequest(_Request):
    items: list[ScoreItem]

    def encode(self, encoder: InputEncoder, max_items: int) -> tuple[list[Encoded], list[str]]:
        within(len(self.items), max_items, "items")
        names = [f"items[{i}]" for i in range(len(self.items))]
        return encoder.texts([item.texts(name) for item, name in zip(self.items, names)]), names


class RewardRequest(_Request):
    """OpenRLHF's call: whole prompt+response strings. `prompts` and `labels` are sent by its
    client and accepted, but not read (OpenRLHF's own server ignores them too)."""

    query: list[StrictStr]
    """Empty is answered with empty lists: OpenRLHF's multi-server client sends a server whose
    share of a batch is empty an empty query."""
    prompts: list[Any] | None = None
    labels: list[Any] | None = None

    def encode(self, encoder: InputEncoder, max_items: int) -> tuple[list[Encoded], list[str]]:
        texts, names = self.texts(max_items)
        return encoder.texts(texts), names

    def texts(self, max_items: int) -> tuple[list[tuple], list[str]]:
        """Each query as (prompt, response): whole strings, so the prompt is empty."""
        within(len(self.query), max_items, "query")
        return [("", query) for query in self.query], [f"query[{i}]" for i in range(len(self.query))]


TEMPLATE_ARGUMENTS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs"})
"""`apply_chat_template`'s own parameters, which `chat_template_kwargs` may not set."""


class ClassifyRequest(_VllmRequest):
    """vLLM's classify request."""

    input: StrictStr | list[Any] | None = None
    """vLLM's forms: a string, a list of strings, one input's token ids (a list of ints) or
    several inputs' (a list of such lists); `[]` is an empty batch. Its form is checked by
    `token_ids` and its ids by the encoder (`given_ids`), each naming the element at fault."""
    messages: list[Any] | None = None
    use_activation: StrictBool | None = None
    activation: StrictBool | None = None
    """Legacy alias of use_activation (verl before 0.9 sends it)."""
    softmax: StrictBool | None = None
    """Legacy alias of use_activation."""
    truncate_prompt_tokens: StrictInt | None = None
    """Refused when set: over-long inputs follow the server's one length policy."""
    add_special_tokens: StrictBool | None = None
    """Add the tokenizer's special tokens to a text, as vLLM does (default true). A conversation's
    chat template writes its own (default false; true would add a second set, and is refused)."""
    add_generation_prompt: StrictBool = False
    """A conversation only: render it with the template's generation prompt (the reward is then
    read after it, with no EOS appended: the conversation is not finished)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """A conversation only: more variables for the chat template (e.g. `enable_thinking`)."""

    def encode(self, encoder: InputEncoder, max_items: int) -> tuple[list[Encoded], list[str]]:
        """The inputs (whole strings, one conversation, or token ids) as ids, and their names for errors."""
        ids, names = self.token_ids(max_items)
        if ids is not None:
            return given_ids(encoder, ids, names)
        texts, names = self.texts(max_items)
        if self.messages is None:
            return encoder.texts(texts, self.add_special_tokens is not False), names
        return encoder.texts(texts, chat=self.chat_options()), names

    def chat_options(self) -> dict:
        """The chat template's arguments of a conversation request; a 422 for options vLLM gives no meaning."""
        if self.add_special_tokens:
            raise RequestProblem(422, "add_special_tokens: true with 'messages': the chat template writes the "
                                      "special tokens itself, and a second set would change the text",
                                 "add_special_tokens")
        variables = dict(self.chat_template_kwargs or {})
        reserved = sorted(set(variables) & TEMPLATE_ARGUMENTS)
        if reserved:
            raise RequestProblem(422, f"chat_template_kwargs.{reserved[0]}: not a template variable (an argument of "
                                      "the template call itself)", f"chat_template_kwargs.{reserved[0]}")
        return {**variables, "add_generation_prompt": self.add_generation_prompt}

    def texts(self, max_items: int) -> tuple[list[tuple], list[str]]:
        """The inputs as (prompt, response): whole strings (an empty prompt), or one conversation.
        Token ids are refused (422): this is how a token-head model reads a request, and it must
        find the response's tokens in text."""
        ids, names = self.token_ids(max_items)
        if ids is not None:
            raise RequestProblem(422, "input: token ids are scored by a sequence reward model only; a token-head "
                                      "model needs text (a string, a list of strings, or 'messages')", "input")
        if self.messages is not None:
            return [conversation(self.messages, "")], ["messages"]
        if isinstance(self.input, str):
            return [("", self.input)], ["input"]
        return [("", text) for text in self.input], names

    def token_ids(self, max_items: int) -> tuple[list[list] | None, list[str]]:
        """`input` as token ids, a list per input (their elements are checked by the encoder), or
        None when it is text; and the inputs' names. Which form a list is, its first element
        says: a string, a list, or else a token id; a string among the ids is a bad id."""
        if self.truncate_prompt_tokens is not None:
            raise RequestProblem(422, "truncate_prompt_tokens is not supported: over-long inputs follow the "
                                      "server's --length-policy (error, or truncate_prompt which keeps the "
                                      "whole response)", "truncate_prompt_tokens")
        if (self.input is None) == (self.messages is None):
            raise RequestProblem(422, "give 'input' (a string, a list of strings, or token ids) or 'messages' "
                                      "(one conversation), exactly one of them", "input")
        if self.messages is not None:
            return None, ["messages"]
        for option in ("add_generation_prompt", "chat_template_kwargs"):
            if getattr(self, option):
                raise RequestProblem(422, f"{option}: applies to 'messages' only (a chat template renders them)",
                                     option)
        if isinstance(self.input, str):
            return None, ["input"]
        first = self.input[0] if self.input else ""
        if not isinstance(first, str | list | int | float):
            raise RequestProblem(422, "input[0]: expected a string, a token id or a list of token ids", "input[0]")
        if not isinstance(first, list | str):
            return [self.input], ["input"]  # one input's ids
        within(len(self.input), max_items, "input")
        names = [f"input[{i}]" for i in range(len(self.input))]
        kind = type(first)
        for value, name in zip(self.input, names):
            if not isinstance(value, kind):
                what = "a list of token ids" if kind is list else "a string"
                raise RequestProblem(422, f"{name}: expected {what}, as input[0] is (give every input the same "
                                          "form: strings, or lists of token ids)", name)
        return (self.input if kind is list else None), names

    def use_activation_resolved(self) -> bool:
        """vLLM's default is on; the legacy aliases mean the same and must not contradict it."""
        given = {name: value for name in ("use_activation", "activation", "softmax")
                 if (value := getattr(self, name)) is not None}
        if len(set(given.values())) > 1:
            raise RequestProblem(422, f"{' and '.join(given)} disagree ({given}); send use_activation only",
                                 "use_activation")
        return next(iter(given.values()), True)


class PoolingRequest(ClassifyRequest):
    """vLLM's pooling request; a sequence reward model serves task `classify` only (null: the
    model's own task, classify). `encoding_format` float is vLLM's default and the one served."""

    task: StrictStr | None = CLASSIFY_TASK
    encoding_format: Literal["float"] = "float"

    @field_validator("task")
    @classmethod
    def _model_task(cls, task: str | None) -> str:
        return CLASSIFY_TASK if task is None else task


def conversation(messages, where: str) -> tuple:
    """(prompt turns, final message) of one chat, validated as training validates `messages`."""
    name = f"{where}.messages" if where else "messages"
    if not isinstance(messages, list):
        raise RequestProblem(422, f"{name}: expected a list of messages", name)
    return _parsed(RawRow(where, {"messages": messages}), RowKeys(response="messages"))


def _parsed(raw: RawRow, keys: RowKeys) -> tuple:
    parsed = parse_row(raw, keys, scoring=True)
    if isinstance(parsed, RowProblem):
        raise request_problem(parsed.location, parsed.field, parsed.message, parsed.reason)
    return parsed.prompt, parsed.responses[0]


def request_problem(where: str, field: str | None, message: str, reason: str | None = None) -> RequestProblem:
    """A 4xx for a problem training's validation found in request item `where` (`items[2]`, or
    "" for the request itself), naming the field as the client wrote it: a 400 for text that is
    not Unicode (as `checked` answers it), else a 422."""
    name = ".".join(part for part in (where, field) if part)
    return RequestProblem(_status(reason), f"{name}: {message}" if name else message, name or None)


def _status(reason: str | None) -> int:
    """400 for input no model can read (text that is not Unicode, ids that are not token ids), else 422."""
    return 400 if reason in ("bad_text", "bad_input_ids") else 422


def within(count: int, max_items: int, field: str) -> None:
    """Checked before anything is tokenized: the limit bounds the work one request can ask for."""
    if count > max_items:
        raise RequestProblem(422, f"{field}: {count} items exceed the server's limit of {max_items} per request "
                                  "(--max-items); split the request", field)


def given_ids(encoder: InputEncoder, sequences: list[list], names: list[str]) -> tuple[list[Encoded], list[str]]:
    """Token ids from the caller, as the encoder takes them; an input the encoder finds a bad id
    in is renamed to the element at fault (`input[1][3]`), so that its 400 names it."""
    encoded = encoder.token_ids(sequences)
    vocab = len(encoder.tokenizer)
    for index, item in enumerate(encoded):
        if item.position is not None:
            names[index] = f"{names[index]}[{item.position}]"
            bad = json.dumps(sequences[index][item.position])
            encoded[index] = Encoded(None, error=f"{bad} is not a token id of this model (a whole number in "
                                                 f"[0, {vocab}))", reason="bad_input_ids")
    return encoded, names


def checked(encoded: list[Encoded], names: list[str]) -> list[list[int]]:
    """Every input's ids; a 4xx naming the first input that cannot be scored: a 400 for text that
    is not Unicode or a bad token id, a 422 for an input that is empty or too long."""
    for item, name in zip(encoded, names):
        if item.ids is None:
            raise RequestProblem(_status(item.reason), f"{name}: {item.error}", name)
    return [item.ids for item in encoded]


def activate(rewards: torch.Tensor) -> torch.Tensor:
    """vLLM's classify activation: a sigmoid for one label, a softmax across several."""
    return rewards.sigmoid() if rewards.shape[-1] == 1 else rewards.softmax(-1)


def per_item(rewards: torch.Tensor) -> list:
    """A float per item for a one-label model, else a list per item."""
    return rewards[:, 0].tolist() if rewards.shape[-1] == 1 else rewards.tolist()


def score_response(rewards: torch.Tensor, normalized: torch.Tensor | None, truncated: list[bool]) -> dict:
    return {"rewards": per_item(rewards), "rewards_normalized": None if normalized is None else per_item(normalized),
            "truncated": truncated}


def reward_response(rewards: torch.Tensor) -> dict:
    """OpenRLHF's reply: `scores` equal `rewards`, as its own server sends them."""
    values = rewards.tolist()
    return {"rewards": values, "scores": values, "extra_logs": {}}


def classify_response(model: str, rewards: torch.Tensor, activation: bool, sequences: list[list[int]],
                      label: Callable[[int], str]) -> dict:
    """vLLM's classify answer; `label` names a class (the model's `id2label`)."""
    probs = activate(rewards) if activation else rewards
    data = [{"index": index, "label": label(int(row.argmax())), "probs": row.tolist(),
             "num_classes": rewards.shape[-1]} for index, row in enumerate(probs)]
    return listing("classify", model, data, sequences)


def pooling_response(model: str, rewards: torch.Tensor, activation: bool, sequences: list[list[int]]) -> dict:
    values = activate(rewards) if activation else rewards
    data = [{"index": index, "object": "pooling", "data": row.tolist()} for index, row in enumerate(values)]
    return listing("pool", model, data, sequences)


def listing(kind: str, model: str, data: list[dict], sequences: list[list[int]]) -> dict:
    tokens = sum(len(ids) for ids in sequences)
    return {"id": f"{kind}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                    "prompt_tokens_details": None}}


def models_response(model: str, created: int, max_length: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                        "owned_by": "megatron-rm", "max_model_len": max_length}]}
