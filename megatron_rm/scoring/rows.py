"""The rows `score_rm` scores: each row's shape, its token sequences, and the fields its
rewards add.

Shapes (field names as training reads them):
- one response: `{prompt?, response}`, `{messages}` (one conversation, its final message is
  the response) or `{input_ids}` (ids of the model's tokenizer) -> `reward`;
- a pair: `{prompt?, chosen, rejected}` -> `chosen_reward`, `rejected_reward`;
- a list: `{prompt?, responses: [...]}` -> `rewards` and `best` (the index of the highest
  reward, the first on ties; by the first label when the model has several).
A reward is a float, or a list with one value per label. Models that store eval-set
statistics add `*_normalized` twins, and every scored row gets `truncated`.

Text rows are validated by training's own parser (`data.rows.parse_row`), so a row that
trains also scores, with the same problems named the same way; encoding problems (too
long, empty) are row problems too, naming the response's field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from megatron_rm.core.file_job import JobRow
from megatron_rm.data.rows import Invalid, RowKeys, RowProblem, decode, parse_row
from megatron_rm.data.sources import RawRow
from megatron_rm.scoring.inputs import ENCODING_REASONS, Encoded, InputEncoder

SINGLE, PAIR, LIST = "single", "pair", "list"
TEXT_KEYS = RowKeys()
MESSAGES_KEYS = RowKeys(response="messages")
TEXT_FIELDS = ("prompt", "response", "chosen", "rejected", "responses", "messages")


@dataclass
class ScoreRow(JobRow):
    """One input row: its fields, and either the sequences to score or its problem."""

    shape: str = SINGLE
    names: list[str] = field(default_factory=list)
    """The field each sequence comes from: `response`, `chosen`, `responses[2]`, `input_ids`, ..."""
    truncated: bool = False


def prepare_rows(raws: Iterable[RawRow], encoder: InputEncoder) -> list[ScoreRow]:
    """Validate and encode a chunk of rows; their texts are tokenized in one batch."""
    rows, texts, ids = [], [], []
    for raw in raws:
        row = ScoreRow(raw.location)
        rows.append(row)
        try:
            row.fields = decode(raw.payload)
            inputs = _inputs(row)
        except Invalid as invalid:
            row.problem = RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)
            continue
        (ids if row.names == ["input_ids"] else texts).append((row, inputs))
    for group, encode in ((texts, encoder.texts), (ids, encoder.token_ids)):
        encoded = iter(encode([one for _, inputs in group for one in inputs]))
        for row, inputs in group:
            _fill(row, [next(encoded) for _ in inputs])
    return rows


def _inputs(row: ScoreRow) -> list:
    """The row's (prompt, response) texts, or its one id list; sets `row.names`."""
    fields = row.fields
    if fields.get("input_ids") is not None:
        _refuse_beside("input_ids", fields, TEXT_FIELDS)
        if not isinstance(fields["input_ids"], list):
            raise Invalid("wrong_type", "input_ids", "expected a list of token ids")
        row.names = ["input_ids"]
        return [fields["input_ids"]]
    keys = TEXT_KEYS
    if fields.get("messages") is not None:
        _refuse_beside("messages", fields, ("prompt", "response"))  # parse_row refuses the others
        if not isinstance(fields["messages"], list):  # parse_row would take a string for a plain response
            raise Invalid("wrong_type", "messages", "expected a list of messages")
        keys = MESSAGES_KEYS
    parsed = parse_row(RawRow(row.location, fields), keys, scoring=True)
    if isinstance(parsed, RowProblem):
        raise Invalid(parsed.reason, parsed.field, parsed.message)
    # The same tests, in the same order, as parse_row's choice of shape.
    if fields.get(keys.response) is not None:
        row.names = [keys.response]
    elif fields.get(keys.chosen) is not None or fields.get(keys.responses) is None:
        row.shape, row.names = PAIR, [keys.chosen, keys.rejected]
    else:
        row.shape, row.names = LIST, [f"{keys.responses}[{index}]" for index in range(len(parsed.responses))]
    return [(parsed.prompt, response) for response in parsed.responses]


def _refuse_beside(name: str, fields: dict, others: tuple[str, ...]) -> None:
    for other in others:
        if other != name and fields.get(other) is not None:
            raise Invalid("mixed_shapes", other, f"a row with '{name}' cannot also have '{other}'")


def _fill(row: ScoreRow, encoded: list[Encoded]) -> None:
    failed = next(((name, one) for name, one in zip(row.names, encoded) if one.ids is None), None)
    if failed is not None:
        name, one = failed
        row.problem = RowProblem(row.location, name, ENCODING_REASONS.get(one.reason, one.reason), one.error)
        return
    row.sequences = [one.ids for one in encoded]
    row.truncated = any(one.truncated for one in encoded)


def scored_fields(row: ScoreRow, rewards: torch.Tensor, normalized: torch.Tensor | None) -> dict:
    """The fields a row gains: its rewards (`rewards`: its sequences' rows, in order)."""
    added = _rewards(row.shape, rewards, "")
    if row.shape == LIST:
        first_label = rewards[:, 0].tolist()
        added["best"] = first_label.index(max(first_label))
    if normalized is not None:
        added.update(_rewards(row.shape, normalized, "_normalized"))
    return {**added, "truncated": row.truncated}


def _rewards(shape: str, rewards: torch.Tensor, suffix: str) -> dict:
    values = [one[0] if len(one) == 1 else one for one in rewards.tolist()]
    if shape == PAIR:
        return {f"chosen_reward{suffix}": values[0], f"rejected_reward{suffix}": values[1]}
    if shape == LIST:
        return {f"rewards{suffix}": values}
    return {f"reward{suffix}": values[0]}
