"""A row to judge: a prompt (a string, or chat messages) and two answers (strings), as
`{prompt, chosen, rejected}` or `{prompt, response_a, response_b}`; or exactly what is wrong
with it, naming the field (the problems `data.rows` reports, so they count alike)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_rm.data.records import Text
from megatron_rm.data.rows import Invalid, RowProblem, _type_name, decode, parse_prompt
from megatron_rm.data.sources import RawRow

PAIR_KEYS = (("chosen", "rejected"), ("response_a", "response_b"))
"""The two spellings of a pair; the first answer of either is the one `preference` is about."""


@dataclass(frozen=True)
class Pair:
    prompt: Text
    first: str
    """`chosen` or `response_a`."""
    second: str
    """`rejected` or `response_b`."""


def parse_pair(raw: RawRow) -> Pair | RowProblem:
    """The row as a Pair, or the first problem found in it (the prompt's, then the answers')."""
    try:
        row = decode(raw.payload)
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)
    prompt = parse_prompt(RawRow(raw.location, row))
    if isinstance(prompt, RowProblem):
        return prompt
    try:
        first, second = (_answer(row, name) for name in _pair_names(row))
    except Invalid as invalid:
        return RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)
    return Pair(prompt, first, second)


def _pair_names(row: dict) -> tuple[str, str]:
    # A key holding null counts as absent, as in data.rows (merged schemas fill missing keys with None).
    present = [names for names in PAIR_KEYS if any(row.get(name) is not None for name in names)]
    if len(present) > 1:
        raise Invalid("mixed_shapes", PAIR_KEYS[1][0],
                      f"a row with '{PAIR_KEYS[0][0]}'/'{PAIR_KEYS[0][1]}' cannot also have "
                      f"'{PAIR_KEYS[1][0]}'/'{PAIR_KEYS[1][1]}'")
    if present:
        return present[0]
    if row.get("responses") is not None:
        raise Invalid("wrong_type", "responses", "a judge compares two answers: give them as 'chosen' and "
                                                 "'rejected', or 'response_a' and 'response_b'")
    raise Invalid("missing_field", PAIR_KEYS[0][0], "missing; a row to judge has 'chosen' and 'rejected', "
                                                    "or 'response_a' and 'response_b'")


def _answer(row: dict, name: str) -> str:
    if row.get(name) is None:
        raise Invalid("missing_field", name, "missing" if name not in row else "is null; a value is required")
    value = row[name]
    if not isinstance(value, str):
        raise Invalid("wrong_type", name, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise Invalid("empty_response", name, "empty response")
    return value
