"""Prompts to generate from: rows of a prompt file read, tokenized and fitted under the model's
length (`prompt_rows`), and the tokens that end a response (`end_token_ids`). `tools/generate.py`
and PPO read their prompts through here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_rm.core.file_job import JobRow
from megatron_rm.data.rows import Invalid, RowProblem, decode, parse_prompt
from megatron_rm.data.sources import RawRow
from megatron_rm.data.tokenize import Encoded, encode_prompts, fit

PROMPT_POLICIES = ("error", "truncate_prompt")


@dataclass
class PromptRow(JobRow):
    truncated: bool = False
    """The prompt's oldest tokens were cut to leave room for max_new_tokens."""


def prompt_rows(raws: list[RawRow], tokenizer, room: int, prompt_policy: str, max_new_tokens: int,
                max_sequence_length: int) -> list[PromptRow]:
    """Each raw row as a prompt to generate from (`sequences` holds its one token sequence), or its
    problem: not a prompt row, or too long to leave `room` tokens' worth of prompt."""
    rows, prompts = [], []
    for raw in raws:
        row = PromptRow(raw.location)
        rows.append(row)
        try:
            row.fields = decode(raw.payload)
        except Invalid as invalid:
            row.problem = RowProblem(raw.location, invalid.field, invalid.reason, invalid.message)
            continue
        parsed = parse_prompt(RawRow(raw.location, row.fields))
        if isinstance(parsed, RowProblem):
            row.problem = parsed
            continue
        prompts.append((row, parsed))
    # Training's length policy, with the prompt's last token in the place of a response:
    # truncate_prompt cuts the oldest tokens (a leading BOS stays) and never that one.
    truncation = "drop" if prompt_policy == "error" else "truncate_prompt"
    for (row, _), ids in zip(prompts, encode_prompts(tokenizer, [prompt for _, prompt in prompts])):
        fitted, status = fit(Encoded(ids, len(ids) - 1), room, truncation, tokenizer.bos_token_id,
                              tokenizer.eos_token_id)
        if fitted is None:
            field = "messages" if "messages" in row.fields else "prompt"
            row.problem = RowProblem(row.location, field, "too_long",
                                     f"{len(ids)} prompt tokens + max_new_tokens={max_new_tokens} exceed the "
                                     f"model's max_sequence_length={max_sequence_length}"
                                     + (" (truncate_prompt cuts the oldest tokens)" if prompt_policy == "error"
                                        else ""))
            continue
        row.sequences, row.truncated = [fitted], status == "truncated"
    return rows


def end_token_ids(tokenizer, model_path: str | Path) -> tuple[int, ...]:
    """The tokens that end a response of the policy loaded from `model_path`: the tokenizer's EOS
    and, for a Hugging Face folder, those its generation_config.json names (a chat model may end
    its turn with another token, as Llama 3 Instruct does with <|eot_id|>)."""
    ends = [tokenizer.eos_token_id]
    config = Path(model_path) / "generation_config.json"
    if config.is_file():
        named = json.loads(config.read_text()).get("eos_token_id")
        ends += named if isinstance(named, list) else [named] if isinstance(named, int) else []
    return tuple(dict.fromkeys(ends))
