"""Checking one raw row and turning it into a `Comparison`, or saying exactly what is wrong with it.

Three row shapes are accepted: a pair (`chosen`/`rejected`), a ranked group
(`responses` + `ranking`) and a single response (`response`, judged by its
`labels` alone), each with plain-text or chat-message responses. Field names are
the user's (`RowKeys`), and so are the names in every problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from megatron_rm.data.records import Comparison, Text
from megatron_rm.data.sources import RawRow

REASONS = ("invalid_json", "not_an_object", "missing_field", "wrong_type", "mixed_shapes", "empty_response",
           "identical_responses", "bad_messages", "bad_margin", "bad_ranking", "bad_labels", "bad_steps",
           "bad_separator", "bad_text")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class RowKeys:
    """The row's field names (data.prompt_key, ...)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    response: str = "response"
    responses: str = "responses"
    ranking: str = "ranking"
    margin: str = "margin"
    labels: str = "labels"
    completions: str = "completions"
    label: str = "label"
    input: str = "input"


@dataclass(frozen=True)
class RowProblem:
    location: str
    """Where the row is: `file:line` or `file:row N`."""
    field: str | None
    """The offending field as the user spelled it, e.g. `chosen[2].role`; None for the row as a whole."""
    reason: str
    """One of REASONS, for counting."""
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: field '{self.field}'" if self.field is not None else self.location
        return f"{where}: {self.message}"


class Invalid(Exception):
    """A row problem found while parsing: the reason (one of REASONS), field and message."""

    def __init__(self, reason: str, field: str | None, message: str):
        self.reason, self.field, self.message = reason, field, message


def parse_row(raw: RawRow, keys: RowKeys = RowKeys(), *, scoring: bool = False) -> Comparison | RowProblem:
    """The row as a Comparison, or the first problem found in it.

    `scoring`: the row is only to be scored, so its responses keep the row's order (a
    `ranking` is neither needed nor applied), one response is enough in `responses`
    (best-of-N with N = 1) and repeated responses are allowed (samples of a policy repeat).
    """
    try:
        return _comparison(decode(raw.payload), keys, raw.location, scoring)
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)


def parse_prompt(raw: RawRow, keys: RowKeys = RowKeys()) -> Text | RowProblem:
    """A prompt to generate from: `prompt` (a string, or messages), or `messages` (a
    conversation whose final turn is not the assistant's); or the first problem found."""
    try:
        row = decode(raw.payload)
        has_prompt, has_messages = row.get(keys.prompt) is not None, row.get("messages") is not None
        if has_prompt and has_messages:
            raise Invalid("mixed_shapes", "messages", f"a row with '{keys.prompt}' cannot also have 'messages'")
        name = "messages" if has_messages else keys.prompt
        value = _required(row, name)
        if isinstance(value, str):
            if not value.strip():
                raise Invalid("empty_response", name, "empty prompt")
            return value
        if not isinstance(value, list):
            raise Invalid("wrong_type", name, f"expected a string or a list of messages, got {_type_name(value)}")
        messages = _messages(value, name)
        if not messages:
            raise Invalid("empty_response", name, "no messages")
        if messages[-1]["role"] == "assistant":
            raise Invalid("bad_messages", f"{name}[{len(messages) - 1}].role",
                          "the final message is the assistant's: a prompt ends with the turn to answer")
        return messages
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)


def parse_demonstration(raw: RawRow, keys: RowKeys = RowKeys()) -> Comparison | RowProblem:
    """A supervised example, a prompt and the one response to imitate, or the first problem found.

    Accepted: `{prompt, response}`; `{messages}` (a conversation: its final message, the
    assistant's, is the response and every turn before it the prompt); and preference rows
    (`{prompt, chosen, rejected}`, or ranked `responses`), whose best response is the one taught.
    Margins and labels are not used.
    """
    try:
        row = decode(raw.payload)
        if row.get("messages") is not None:
            return _conversation(row, keys, raw.location)
        if all(row.get(name) is None for name in (keys.response, keys.chosen, keys.responses)):
            raise Invalid("missing_field", keys.response,
                          f"missing; an example needs '{keys.response}' (with '{keys.prompt}'), 'messages', "
                          f"or '{keys.chosen}' and '{keys.rejected}' (the chosen response is taught)")
        comparison = _comparison(row, keys, raw.location, False)
        return Comparison(prompt=comparison.prompt, responses=comparison.responses[:1], source=raw.location)
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)


def _conversation(row: dict, keys: RowKeys, location: str) -> Comparison:
    """`{messages}`: the final (assistant) message is the response, the turns before it the prompt."""
    for other in (keys.prompt, keys.response, keys.chosen, keys.rejected, keys.responses):
        if row.get(other) is not None:
            raise Invalid("mixed_shapes", other, f"a row with 'messages' cannot also have '{other}'")
    value = row["messages"]
    if not isinstance(value, list):
        raise Invalid("wrong_type", "messages", f"expected a list of messages, got {_type_name(value)}")
    messages = _messages(value, "messages")
    if not messages:
        raise Invalid("empty_response", "messages", "no messages")
    last = f"messages[{len(messages) - 1}]"
    if messages[-1]["role"] != "assistant":
        raise Invalid("bad_messages", f"{last}.role", f"is {messages[-1]['role']!r}: the final message is the "
                                                      "response to learn, so it must be the assistant's")
    if not messages[-1]["content"].strip():
        raise Invalid("empty_response", f"{last}.content", "the final message is empty")
    return Comparison(prompt=messages[:-1], responses=(messages[-1:],), source=location)


def decode(payload) -> dict:
    """A row's JSON object (a JSON Lines row arrives as bytes); `Invalid` when it is none."""
    if isinstance(payload, bytes):
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Invalid("invalid_json", None, f"not valid UTF-8 (byte {error.start + 1} of the line)") from None
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as error:
            raise Invalid("invalid_json", None, f"invalid JSON ({error.msg} at column {error.colno})") from None
        escaped_surrogate = SURROGATE_ESCAPE.search(line) is not None
    else:
        escaped_surrogate = True  # a row read by another format: its strings are checked
    if not isinstance(payload, dict):
        raise Invalid("not_an_object", None, f"expected a JSON object, got {_type_name(payload)}")
    if escaped_surrogate:
        _check_unicode(payload, None)
    return payload


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""How JSON spells a UTF-16 surrogate (`"\\ud800"`); one without its pair is no character at all."""


def _check_unicode(value, name: str | None) -> None:
    """`Invalid` (bad_text) naming the first string in `value` that no tokenizer can take."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise Invalid("bad_text", name, f"not valid Unicode: a lone surrogate {value[error.start]!r} at "
                                            f"character {error.start}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{name}[{index}]")


def _comparison(row: dict, keys: RowKeys, location: str, scoring: bool) -> Comparison:
    # A key holding null counts as absent: merged Parquet / datasets schemas fill missing keys with None.
    if row.get(keys.response) is not None:
        return _single_response(row, keys, location, scoring)
    if row.get(keys.chosen) is not None or row.get(keys.responses) is None:
        names = [keys.chosen, keys.rejected]
        texts = [_required(row, name) for name in names]
        order = [0, 1]
        margin = _margin(row.get(keys.margin), keys.margin)
    else:
        texts = row[keys.responses]
        fewest = 1 if scoring else 2
        if not isinstance(texts, list) or len(texts) < fewest:
            got = f"{len(texts)} response(s)" if isinstance(texts, list) else _type_name(texts)
            raise Invalid("wrong_type", keys.responses,
                          f"expected a list of at least {fewest} responses, got {got}")
        names = [f"{keys.responses}[{index}]" for index in range(len(texts))]
        order = list(range(len(texts))) if scoring else _ranking(row.get(keys.ranking), len(texts), keys.ranking)
        if row.get(keys.margin) is not None:
            raise Invalid("bad_margin", keys.margin, "a margin applies to pairs only, not to ranked responses")
        margin = None
    prompt, responses = _texts(row.get(keys.prompt), keys.prompt, texts, names, distinct=not scoring)
    labels = None if scoring else _labels(row.get(keys.labels), len(texts), keys.labels)
    return Comparison(
        prompt=prompt,
        responses=tuple(responses[index] for index in order),
        source=location,
        margin=margin,
        labels=None if labels is None else tuple(labels[index] for index in order),
    )


def _single_response(row: dict, keys: RowKeys, location: str, scoring: bool) -> Comparison:
    """A pointwise row: one response and its labels, nothing to compare it with."""
    for other in (keys.chosen, keys.rejected, keys.responses):
        if row.get(other) is not None:
            raise Invalid("mixed_shapes", other,
                           f"a row with '{keys.response}' (a single response) cannot also have '{other}'")
    if row.get(keys.margin) is not None:
        raise Invalid("bad_margin", keys.margin, "a margin applies to pairs only, not to a single response")
    if row.get(keys.ranking) is not None:
        raise Invalid("bad_ranking", keys.ranking, "a ranking orders several responses, not a single response")
    prompt, responses = _texts(row.get(keys.prompt), keys.prompt, [row[keys.response]], [keys.response])
    labels = None if scoring else _single_labels(row.get(keys.labels), keys.labels)
    return Comparison(prompt=prompt, responses=tuple(responses), source=location,
                      labels=None if labels is None else (labels,))


def _required(row: dict, name: str):
    if name not in row:
        raise Invalid("missing_field", name, "missing")
    if row[name] is None:
        raise Invalid("missing_field", name, "is null; a value is required")
    return row[name]


def _texts(prompt, prompt_name: str, texts: list, names: list[str], distinct: bool = True) -> tuple:
    """The prompt and responses, all strings or all message tuples, checked for emptiness and
    (when `distinct`) repeats."""
    for text, name in zip(texts, names):
        if not isinstance(text, (str, list)):
            raise Invalid("wrong_type", name, f"expected a string or a list of messages, got {_type_name(text)}")
        if type(text) is not type(texts[0]):
            raise Invalid("wrong_type", name, f"expected {_type_name(texts[0])} like '{names[0]}', "
                                               f"got {_type_name(text)}")
        if isinstance(text, str) and not text.strip():
            raise Invalid("empty_response", name, "empty response")
    if isinstance(texts[0], str):
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise Invalid("wrong_type", prompt_name, f"expected a string like the responses, got {_type_name(prompt)}")
        responses = texts
    else:
        responses = [_messages(text, name) for text, name in zip(texts, names)]
        for response, name in zip(responses, names):
            if not response:
                raise Invalid("empty_response", name, "no messages")
            if not response[-1]["content"].strip():
                raise Invalid("empty_response", f"{name}[{len(response) - 1}].content",
                               "the final message is empty")
        if isinstance(prompt, str) and prompt.strip():
            prompt = ({"role": "user", "content": prompt},)
        elif isinstance(prompt, list):
            prompt = _messages(prompt, prompt_name)
        elif prompt is None or isinstance(prompt, str):
            prompt, responses = _shared_prefix(responses, names)
        else:
            raise Invalid("wrong_type", prompt_name,
                           f"expected a string or a list of messages, got {_type_name(prompt)}")
        for text, name in zip(texts, names):  # a reward is read at the end of the answer
            if text[-1]["role"] != "assistant":
                raise Invalid("bad_messages", f"{name}[{len(text) - 1}].role",
                              f"is {text[-1]['role']!r}: the final message is the response, so it must be the "
                              "assistant's")
    for later in range(len(responses) if distinct else 0):
        for earlier in range(later):
            if responses[later] == responses[earlier]:
                raise Invalid("identical_responses", names[later], f"the same as '{names[earlier]}'")
    return prompt, responses


def _messages(value: list, name: str) -> tuple:
    messages = []
    for index, message in enumerate(value):
        field = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise Invalid("bad_messages", field,
                           f"expected a message object with 'role' and 'content', got {_type_name(message)}")
        if message.get("role") not in ROLES:
            problem = "missing" if message.get("role") is None else f"unknown role {message['role']!r}"
            raise Invalid("bad_messages", f"{field}.role", f"{problem} (expected one of {', '.join(ROLES)})")
        content = message.get("content")
        if isinstance(content, list):
            content = _text_parts(content, f"{field}.content")
        if not isinstance(content, str):
            got = "missing" if "content" not in message else _type_name(content)
            raise Invalid("bad_messages", f"{field}.content", f"expected a string, got {got}")
        # Extra keys (name, tool_calls, ...) are dropped: the chat template gets role and content only.
        messages.append({"role": message["role"], "content": content})
    return tuple(messages)


def _text_parts(parts: list, name: str) -> str:
    """OpenAI's content-part list as one string: its text parts joined by newlines, as vLLM joins
    them; any other part (an image, audio) is refused, since a text model cannot read it."""
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else _type_name(part)
            raise Invalid("bad_messages", f"{name}[{index}]",
                          f"expected a text part {{\"type\": \"text\", \"text\": ...}}, got {kind!r}")
        texts.append(part["text"])
    return "\n".join(texts)


def _shared_prefix(responses: list[tuple], names: list[str]) -> tuple[tuple, list[tuple]]:
    """Moves the leading messages every response shares into the prompt, as TRL's `extract_prompt` does.
    A single conversation shares all its messages with itself, so its final message is the response
    and the turns before it the prompt."""
    if len(responses) == 1:
        return responses[0][:-1], [responses[0][-1:]]
    shared = 0
    while all(shared < len(response) and response[shared] == responses[0][shared] for response in responses):
        shared += 1
    rest = [response[shared:] for response in responses]
    for later, response in enumerate(rest):
        if response:
            continue
        for other in range(len(rest)):
            if other != later and rest[other] == response:
                raise Invalid("identical_responses", names[max(later, other)],
                               f"the same as '{names[min(later, other)]}'")
        raise Invalid("empty_response", names[later],
                       "every message is shared with another response (so is part of the prompt); none is left")
    return responses[0][:shared], rest


def _margin(value, name: str) -> float | None:
    if value is None:
        return None
    if not _is_number(value):
        raise Invalid("bad_margin", name, f"expected a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise Invalid("bad_margin", name, f"expected a finite number, got {value}")
    return float(value)


def _ranking(value, count: int, name: str) -> list[int]:
    expected = f"a list ordering the {count} responses best first, e.g. {list(range(count))}"
    if value is None:
        raise Invalid("bad_ranking", name, f"missing; expected {expected}")
    if not isinstance(value, list) or not all(type(index) is int for index in value):
        raise Invalid("bad_ranking", name, f"expected {expected} (whole numbers), got {value!r}")
    if sorted(value) != list(range(count)):
        raise Invalid("bad_ranking", name, f"expected {expected} (each index once), got {value!r}")
    return value


def _labels(value, count: int, name: str) -> list[tuple[float, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        got = len(value) if isinstance(value, list) else _type_name(value)
        raise Invalid("bad_labels", name, f"expected a list with one entry per response ({count}), got {got}")
    labels = []
    for index, entry in enumerate(value):
        field = f"{name}[{index}]"
        labels.append(_label_values(entry, field))
        if len(labels[-1]) != len(labels[0]):
            raise Invalid("bad_labels", field, f"has {len(entry)} values but {name}[0] has {len(labels[0])}")
    return labels


def _single_labels(value, name: str) -> tuple[float, ...] | None:
    """A single response's labels: a list with one value per attribute, or one number for one attribute."""
    if value is None:
        return None
    if isinstance(value, list):
        return _label_values(value, name)
    if not _is_number(value):
        raise Invalid("bad_labels", name,
                       f"expected a number or a list of numbers (null where missing), got {_type_name(value)}")
    return (_label(value, name),)


def _label_values(entry, field: str) -> tuple[float, ...]:
    """One response's attribute values: a non-empty list of finite numbers, null (NaN) where missing."""
    if not isinstance(entry, list) or not entry:
        got = "an empty list" if entry == [] else _type_name(entry)
        raise Invalid("bad_labels", field, f"expected a non-empty list of numbers (null where missing), got {got}")
    return tuple(_label(number, f"{field}[{position}]") for position, number in enumerate(entry))


def _label(number, field: str) -> float:
    if number is None:
        return math.nan
    if not (_is_number(number) and math.isfinite(number)):
        raise Invalid("bad_labels", field, f"expected a finite number or null, got {number!r}")
    return float(number)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class ProblemLog:
    """Counts every invalid row by reason and keeps the first few for the message."""

    def __init__(self, shown: int = 5):
        self.shown = shown
        self.first: list[RowProblem] = []
        self.counts: dict[str, int] = {}
        self.total = 0

    def add(self, problem: RowProblem) -> None:
        self.total += 1
        self.counts[problem.reason] = self.counts.get(problem.reason, 0) + 1
        if len(self.first) < self.shown:
            self.first.append(problem)

    def by_reason(self) -> str:
        """`reason count, ...`, most frequent first (ties in REASONS' order, then by name)."""
        def rank(item):
            reason, count = item
            return -count, REASONS.index(reason) if reason in REASONS else len(REASONS), reason
        return ", ".join(f"{reason} {count}" for reason, count in sorted(self.counts.items(), key=rank))

    def error_message(self, where, hint: str = "set data.on_invalid=skip to skip them") -> str:
        """The first few problems with file:line and field, how many more, the count by reason
        and `hint` (what to do)."""
        lines = [str(problem) for problem in self.first]
        if self.total > len(self.first):
            lines.append(f"... and {self.total - len(self.first)} more")
        lines.append("by reason: " + self.by_reason())
        shown = "\n  ".join(lines)
        return f"{where}: {self.total} invalid row(s):\n  {shown}\n{hint}"
