"""Rows for outcome and process reward models: a prompt, a response in labelled steps, and the labels.

Accepted row shapes (field names are the user's, `RowKeys`):

- outcome (`loss.type=orm`): `{prompt, response, label}`, or `{messages, label}` whose
  final assistant message is the response. The label is the solution's outcome: a bool,
  0/1, or a probability in [0, 1].
- stepwise (`loss.type=prm`), TRL's stepwise supervision: `{prompt, completions: [step, ...],
  labels: [rating, ...]}`, one rating per step: a bool, a PRM800K rating -1/0/+1 (wrong,
  neutral, right), or the probability that the step is right (kept as a soft target).
- Math-Shepherd: `{input, label}`, where `input` ends each step with the step tag
  (`data.step_tag`, "ки") and `label` is the same text with `+` or `-` in each tag's place.
  The question stays in the first step's text (the data marks no boundary); only the tag
  positions carry labels, so training is the same.

How the steps become tokens and targets is `megatron_rm.data.step_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_rm.data.records import Text
from megatron_rm.data.rows import Invalid, RowKeys, RowProblem, _conversation, _messages, _texts, _type_name, decode
from megatron_rm.data.sources import RawRow

Rating = bool | int | float


NEUTRAL_POLICIES = {"positive": 1.0, "negative": 0.0, "ignore": math.nan}
"""What a neutral (0) rating becomes for a 2-class PRM; NaN marks the step unlabelled."""


@dataclass(frozen=True)
class Labelling:
    """How step ratings become targets and where steps end: the settings a store of labelled
    steps is made with."""

    num_classes: int = 2
    """2 (wrong, right) or 3 (wrong, neutral, right): the reward model's classes."""
    neutral: str = "negative"
    """A neutral (0) PRM800K rating with 2 classes: negative, positive or ignore (unlabelled)."""
    separator: str = "\n"
    """Text after every step of a stepwise row; the step's label sits on its last token."""
    step_tag: str = "ки"
    """The step tag of Math-Shepherd rows, which is also their separator."""


@dataclass(frozen=True)
class LabelledSteps:
    """One solution: its prompt, its steps (an outcome row is one step, the whole response) and a
    rating per step."""

    prompt: Text
    steps: tuple[Text, ...]
    """Step texts; an outcome row's single step may be chat messages."""
    ratings: tuple[Rating, ...] | None
    """One per step, as the data gives it (bool, int or float); None for rows only scored."""
    separator: str
    """Written after every step."""
    source: str
    step_names: tuple[str, ...]
    """The field that holds each step, as the user spells it, for messages."""
    outcome: bool = False
    """An outcome row: its label applies to every response token, not to step ends."""


def parse_outcome(raw: RawRow, keys: RowKeys, labelling: Labelling, *,
                  scoring: bool = False) -> LabelledSteps | RowProblem:
    """An outcome row (`{prompt, response, label}` or `{messages, label}`), or its first problem.
    `scoring`: the label is not needed."""
    try:
        row = decode(raw.payload)
        if row.get("messages") is not None:
            comparison = _conversation(row, keys, raw.location)
            prompt, response = comparison.prompt, comparison.responses[0]
        else:
            if row.get(keys.response) is None:
                raise Invalid("missing_field", keys.response, f"missing; an outcome row needs '{keys.response}' "
                                                              f"(with '{keys.prompt}') or 'messages'")
            prompt, responses = _texts(row.get(keys.prompt), keys.prompt, [row[keys.response]], [keys.response])
            response = responses[0]
        ratings = None if scoring else (_outcome(row.get(keys.label), keys.label),)
        return LabelledSteps(prompt, (response,), ratings, "", raw.location, ("messages" if row.get("messages")
                             is not None else keys.response,), outcome=True)
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)


def parse_steps(raw: RawRow, keys: RowKeys, labelling: Labelling, *,
                scoring: bool = False) -> LabelledSteps | RowProblem:
    """A stepwise row (TRL's `{prompt, completions, labels}` or Math-Shepherd's `{input, label}`),
    or its first problem. `scoring`: labels are not needed (and ignored when present)."""
    try:
        row = decode(raw.payload)
        if row.get(keys.completions) is None and isinstance(row.get(keys.input), str):
            return _math_shepherd(row, keys, labelling, raw.location, scoring)
        steps = _required_list(row, keys.completions)
        for index, step in enumerate(steps):
            field = f"{keys.completions}[{index}]"
            if not isinstance(step, str):
                raise Invalid("wrong_type", field, f"expected a string (one step), got {_type_name(step)}")
            if not step.strip():
                raise Invalid("empty_response", field, "empty step")
        prompt = _prompt(row.get(keys.prompt), keys.prompt)
        ratings = None
        if not scoring:
            labels = _required_list(row, keys.labels)
            if len(labels) != len(steps):
                raise Invalid("bad_labels", keys.labels, f"has {len(labels)} labels for {len(steps)} steps "
                                                         f"('{keys.completions}'): one label per step")
            ratings = tuple(_rating(label, f"{keys.labels}[{i}]", labelling) for i, label in enumerate(labels))
        return LabelledSteps(prompt, tuple(steps), ratings, labelling.separator, raw.location,
                             tuple(f"{keys.completions}[{index}]" for index in range(len(steps))))
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)


def _prompt(value, name: str) -> Text:
    """A stepwise row's prompt: text (absent: none), or chat messages (the steps are then the
    assistant's answer)."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise Invalid("wrong_type", name, f"expected a string or a list of messages, got {_type_name(value)}")
    messages = _messages(value, name)
    if not messages:
        raise Invalid("empty_response", name, "no messages")
    return messages


def _required_list(row: dict, name: str) -> list:
    value = row.get(name)
    if value is None:
        raise Invalid("missing_field", name, "missing" if name not in row else "is null; a list is required")
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else _type_name(value)
        raise Invalid("wrong_type", name, f"expected a non-empty list, got {got}")
    return value


def _outcome(value, name: str) -> float:
    """An outcome label: True/False, 0/1, or a probability in [0, 1]."""
    if value is None:
        raise Invalid("missing_field", name, "missing; an outcome row needs a label (0/1, true/false or a "
                                             "probability)")
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not (0 <= value <= 1):
        raise Invalid("bad_labels", name, f"expected true/false, 0/1 or a probability in [0, 1], got {value!r}")
    return float(value)


def _rating(value, field: str, labelling: Labelling) -> Rating:
    """A step rating as the data gives it: its python type says its format (bool, a PRM800K int
    -1/0/+1, or a float probability), which `labels_from_ratings` reads."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value not in (-1, 0, 1):
            raise Invalid("bad_labels", field, f"an integer rating must be -1, 0 or 1 (wrong, neutral, right), "
                                               f"got {value}")
        return value
    if isinstance(value, float):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise Invalid("bad_labels", field, f"a float label is a probability in [0, 1], got {value!r}")
        if labelling.num_classes != 2:
            raise Invalid("bad_labels", field, f"a probability label ({value}) needs 2 classes "
                                               f"(loss.num_classes={labelling.num_classes})")
        return value
    raise Invalid("bad_labels", field, f"expected true/false, -1/0/1 or a probability, got {_type_name(value)}")


def _math_shepherd(row: dict, keys: RowKeys, labelling: Labelling, location: str, scoring: bool) -> LabelledSteps:
    text, tag = row[keys.input], labelling.step_tag
    pieces = text.split(tag)
    steps, tail = pieces[:-1], pieces[-1]
    if not steps:
        raise Invalid("bad_steps", keys.input, f"has no step tag {tag!r} (data.step_tag): no step to label")
    for index, step in enumerate(steps):
        if not step.strip():
            raise Invalid("empty_response", keys.input, f"step {index + 1} (before tag {index + 1}) is empty")
    if tail.strip():
        raise Invalid("bad_steps", keys.input, f"text after the last step tag {tag!r} has no label: {tail[:40]!r}")
    ratings = None if scoring else _tag_ratings(row.get(keys.label), steps, keys.label)
    return LabelledSteps("", tuple(steps), ratings, tag, location,
                         tuple(f"{keys.input} (step {index + 1})" for index in range(len(steps))))


def _tag_ratings(label, steps: list[str], name: str) -> tuple[bool, ...]:
    """Math-Shepherd's label text: the input with `+` or `-` in place of each step tag."""
    if not isinstance(label, str):
        raise Invalid("missing_field" if label is None else "wrong_type", name,
                      f"expected the input's text with '+' or '-' at each step tag, got {_type_name(label)}")
    ratings, position = [], 0
    for index, step in enumerate(steps):
        if not label.startswith(step, position):
            raise Invalid("bad_labels", name, f"differs from the input's text in step {index + 1}")
        mark = label[position + len(step): position + len(step) + 1]
        if mark not in ("+", "-"):
            raise Invalid("bad_labels", name, f"expected '+' or '-' where step {index + 1}'s tag is, got {mark!r}")
        ratings.append(mark == "+")
        position += len(step) + 1
    return tuple(ratings)


def labels_from_ratings(
    ratings: Sequence[bool | int | float] | torch.Tensor, num_classes: int, neutral: str | None = None
) -> torch.Tensor:
    """One solution's step labels, as the PRM losses take them, from its step ratings.

    Each rating's python type says its format: bool (correct / wrong), int in
    {-1, 0, +1} (PRM800K: wrong / neutral / correct) or float in [0, 1] (the
    probability that the step is correct, e.g. from Monte-Carlo rollouts). A
    tensor is read through `tolist()`, so its dtype decides.

    num_classes=2 gives a float64 tensor of targets for `token_binary_loss`:
    True / +1 -> 1.0, False / -1 -> 0.0, floats kept, and a neutral 0 -> 1.0,
    0.0 or NaN (unlabelled: mask it) for `neutral` = "positive", "negative" or
    "ignore". PRM800K's neutral steps are neither right nor wrong, so no default
    is assumed: a neutral rating without a policy raises ValueError.

    num_classes=3 gives an int64 tensor of class indices for `token_class_loss`:
    0 = negative (-1, False), 1 = neutral (0), 2 = positive (+1, True). Neutral
    is its own class, so `neutral` must stay None; a float rating has no class
    and raises ValueError.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes!r}")
    if num_classes == 2 and neutral is not None and neutral not in NEUTRAL_POLICIES:
        raise ValueError(f"neutral must be one of {sorted(NEUTRAL_POLICIES)}, got {neutral!r}")
    if num_classes == 3 and neutral is not None:
        raise ValueError(f"a 3-class PRM keeps neutral steps as class 1; neutral must be None, got {neutral!r}")
    if isinstance(ratings, torch.Tensor):
        ratings = ratings.tolist()
    labels: list[float | int] = []
    for step, rating in enumerate(ratings):
        if isinstance(rating, bool):
            labels.append((1.0 if rating else 0.0) if num_classes == 2 else (2 if rating else 0))
        elif isinstance(rating, int):
            if rating not in (-1, 0, 1):
                raise ValueError(f"step {step}: an integer rating must be -1, 0 or +1, got {rating}")
            if num_classes == 3:
                labels.append(rating + 1)
            elif rating == 0:
                if neutral is None:
                    raise ValueError(f"step {step}: rating 0 (neutral) needs neutral= one of "
                                     f"{sorted(NEUTRAL_POLICIES)} for a 2-class PRM")
                labels.append(NEUTRAL_POLICIES[neutral])
            else:
                labels.append(1.0 if rating == 1 else 0.0)
        elif isinstance(rating, float):
            if num_classes == 3:
                raise ValueError(f"step {step}: a float rating {rating} has no class; a 3-class PRM needs "
                                 f"ratings in {{-1, 0, +1}}")
            if not 0.0 <= rating <= 1.0:  # also refuses NaN
                raise ValueError(f"step {step}: a float rating is a probability in [0, 1], got {rating}")
            labels.append(rating)
        else:
            raise ValueError(f"step {step}: a rating must be a bool, an int or a float, got {type(rating).__name__}")
    return torch.tensor(labels, dtype=torch.float64 if num_classes == 2 else torch.int64)
