"""The rows `score_rm` scores with a token-head model (outcome and process reward models):
each row's shape, its responses located as token ids, and the fields their rewards add.

Shapes, as `scoring.rows` has them for sequence heads, with a response either a text (an
outcome) or a list of steps (see `token_scores`):
- stepwise: `{prompt?, completions: [step, ...]}` (TRL; `labels` ignored) or Math-Shepherd's
  `{input}` (steps ended by the step tag) -> `reward`, `step_rewards`;
- outcome: `{prompt?, response}` or `{messages}` -> `reward` (a `response` that is a list of
  steps is scored as steps, as `completions` are);
- a pair: `{prompt?, chosen, rejected}` -> `chosen_reward`, `rejected_reward` (and
  `chosen_step_rewards`, `rejected_step_rewards` for steps);
- a list (best-of-N): `{prompt?, responses: [...]}` -> `rewards`, `best` (the index of the
  highest, the first on ties) and, when a response has steps, `step_rewards` (a list per
  response, null for a text).
Every scored row gets `truncated`. `{input_ids}` rows are refused: a token head's reward is
read at the response's tokens or step ends, which ids alone do not mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from megatron_rm.data.rows import Invalid, RowKeys, RowProblem, decode
from megatron_rm.data.sources import RawRow
from megatron_rm.data.steps import parse_outcome, parse_steps
from megatron_rm.scoring.inputs import InputEncoder
from megatron_rm.scoring.rows import LIST, PAIR, SINGLE, ScoreRow
from megatron_rm.scoring.token.scores import Located, TokenReading, checked, locate, parse_response, read

SHAPE_FIELDS = ("completions", "input", "response", "messages", "chosen", "responses", "input_ids")
"""The fields that say a row's shape, in the order they are tested."""


@dataclass
class TokenScoreRow(ScoreRow):
    located: list[Located] = field(default_factory=list)
    """Each sequence's read positions."""


def prepare_token_rows(raws: Iterable[RawRow], encoder: InputEncoder, reading: TokenReading) -> list[TokenScoreRow]:
    """Validate and locate a chunk of rows."""
    rows = []
    for raw in raws:
        row = TokenScoreRow(raw.location)
        rows.append(row)
        try:
            row.fields = decode(raw.payload)
            row.located = [locate(encoder, parsed, name) for parsed, name in zip(_responses(row, reading), row.names)]
        except Invalid as invalid:
            row.problem = RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)
            continue
        row.sequences = [one.ids for one in row.located]
        row.truncated = any(one.truncated for one in row.located)
    return rows


def _responses(row: TokenScoreRow, reading: TokenReading) -> list:
    """The row's responses as parsed steps (an outcome is one step); sets `row.shape`, `row.names`."""
    fields = row.fields
    shape = next((name for name in SHAPE_FIELDS if fields.get(name) is not None), None)
    if shape is None:
        raise Invalid("missing_field", "response", "missing; a token-head model scores {prompt, completions: "
                                                   "[step, ...]}, {input} (Math-Shepherd), {prompt, response}, "
                                                   "{messages}, {prompt, chosen, rejected} or {prompt, responses}")
    if shape == "input_ids":
        raise Invalid("wrong_type", "input_ids", "a token-head model reads its reward at the response's tokens or "
                                                 "step ends, which ids alone do not mark: give the texts")
    _refuse_beside(shape, fields)
    row.names = [shape]
    if shape in ("completions", "input"):
        return [checked(parse_steps(RawRow(row.location, fields), RowKeys(), reading.labelling, scoring=True))]
    if shape == "response":  # a text, or a list of steps
        return [parse_response(reading, row.location, fields.get("prompt"), fields["response"], "response")]
    if shape == "messages":
        return [checked(parse_outcome(RawRow(row.location, fields), RowKeys(), reading.labelling, scoring=True))]
    if shape == "chosen":
        if fields.get("rejected") is None:
            raise Invalid("missing_field", "rejected", "missing; a pair needs 'chosen' and 'rejected'")
        row.shape, row.names, values = PAIR, ["chosen", "rejected"], [fields["chosen"], fields["rejected"]]
    else:
        values = fields["responses"]
        if not isinstance(values, list) or not values:
            raise Invalid("wrong_type", "responses", "expected a non-empty list of responses (texts, or lists of "
                                                     "steps)")
        row.shape, row.names = LIST, [f"responses[{index}]" for index in range(len(values))]
    return [parse_response(reading, row.location, fields.get("prompt"), value, name)
            for value, name in zip(values, row.names)]


def _refuse_beside(shape: str, fields: dict) -> None:
    """One shape per row: a stepwise row's `input` may only be Math-Shepherd's, and so on."""
    allowed = {"chosen": ("rejected",)}.get(shape, ())
    for other in SHAPE_FIELDS + ("rejected",):
        if other != shape and other not in allowed and fields.get(other) is not None:
            raise Invalid("mixed_shapes", other, f"a row with '{shape}' cannot also have '{other}'")
    if shape in ("input", "messages") and fields.get("prompt") is not None:
        raise Invalid("mixed_shapes", "prompt", f"a row with '{shape}' cannot also have 'prompt'")


def token_fields(row: TokenScoreRow, logits: list[torch.Tensor], reading: TokenReading) -> dict:
    """The fields a row gains from its sequences' (tokens, classes) logits, in order."""
    rewards, steps = zip(*(read(one, located, reading) for one, located in zip(logits, row.located)))
    stepwise = any(one is not None for one in steps)
    if row.shape == SINGLE:
        added = {"reward": rewards[0], **({"step_rewards": steps[0]} if stepwise else {})}
    elif row.shape == PAIR:
        added = {"chosen_reward": rewards[0], "rejected_reward": rewards[1]}
        added.update({f"{name}_step_rewards": one for name, one in zip(row.names, steps) if one is not None})
    else:
        added = {"rewards": list(rewards), "best": rewards.index(max(rewards)),
                 **({"step_rewards": list(steps)} if stepwise else {})}
    return {**added, "truncated": row.truncated}
