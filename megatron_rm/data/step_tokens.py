"""Labelled steps as token ids and per-token targets, for training, evaluation and scoring.

A stepwise document is the prompt, then every step followed by its separator, then
the EOS, tokenized as one text (TRL's layout: nothing between the prompt and the
first step). A step's label sits on the last token of (step + separator), found from
the tokenizer's character offsets. The label must land on a token that ends exactly
where the separator does: a separator that tokenizes into nothing, or merges with the
text after it into one token, would put the label on another step's token, so such a
row is refused (or skipped and counted, `data.on_invalid=skip`). An outcome document
is prompt + response + EOS, labelled on every response token and the EOS.

Targets are one float per token, NaN where nothing is learnt: the probability that
the step (or outcome) is right for 2 classes, the class index (0 wrong, 1 neutral,
2 right) for 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_rm.data.ending import APPEND_EOS, Ending
from megatron_rm.data.rows import Invalid, RowProblem
from megatron_rm.data.steps import LabelledSteps, Labelling, labels_from_ratings
from megatron_rm.data.tokenize import Encoded, document_text, encode, fit, kept_prompt_tokens


@dataclass(frozen=True)
class StepTokens:
    """One document's ids and where its labels sit."""

    encoded: Encoded
    """Ids ending in one EOS, and how many leading ids are the prompt's."""
    label_positions: list[int]
    """Ids positions that carry a label: each step's last token, or (outcome) every response token."""


def locate_steps(tokenizer, row: LabelledSteps, ending: Ending = APPEND_EOS) -> StepTokens:
    """The ids of `row` and the token ending each step; `Invalid` (naming the step's field) when
    a step's end cannot be placed on a token of its own."""
    if row.outcome:
        encoded = encode(tokenizer, row.prompt, row.steps[0], ending)
        return StepTokens(encoded, list(range(encoded.prompt_tokens, len(encoded.ids))))
    answer = "".join(step + row.separator for step in row.steps)
    response = answer if isinstance(row.prompt, str) else ({"role": "assistant", "content": answer},)
    encoded = encode(tokenizer, row.prompt, response, ending)
    text, special = document_text(tokenizer, row.prompt, response)
    start = len(row.prompt) if isinstance(row.prompt, str) else text.rfind(answer)
    if start < 0:
        raise Invalid("bad_separator", row.step_names[0], "the chat template changes the steps' text (e.g. strips "
                                                         "it), so the step ends cannot be found in it")
    offsets = _offsets(tokenizer, text, special, encoded.ids[:-1] if ending.eos else encoded.ids)
    positions, end = [], start
    for index, step in enumerate(row.steps):
        end += len(step) + len(row.separator)
        position = _token_ending_at(offsets, end, len(row.separator), row.step_names[index])
        if position < encoded.prompt_tokens or (positions and position <= positions[-1]):
            raise Invalid("bad_separator", row.step_names[index],
                          "this step shares its last token with the text before it, so its label has no token "
                          "of its own")
        positions.append(position)
    return StepTokens(encoded, positions)


def _offsets(tokenizer, text: str, special: bool, ids: list[int]) -> np.ndarray:
    """(len(ids), 2) character spans of `ids` (the document's ids before the EOS it ends with) in `text`."""
    if not tokenizer.is_fast:
        raise Invalid("bad_separator", None, f"placing step labels needs a fast tokenizer's character offsets; "
                                             f"{tokenizer.name_or_path} is a slow one")
    out = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    found, spans = out["input_ids"], out["offset_mapping"]
    if len(found) > len(ids) and found[1:len(ids) + 1] == ids:
        found, spans = found[1:], spans[1:]  # encode dropped a doubled BOS
    if found[:len(ids)] != ids:
        raise Invalid("bad_separator", None, "the tokenizer's offsets do not match the document's ids")
    return np.asarray(spans[:len(ids)], dtype=np.int64).reshape(-1, 2)


def _token_ending_at(offsets: np.ndarray, end: int, separator_length: int, field: str) -> int:
    """The position of the token whose text ends at character `end`, the end of a step's separator."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # special tokens have empty spans
    exact = np.flatnonzero(real & (ends == end))
    if len(exact):
        return int(exact[-1])
    if (real & (starts < end) & (ends > end)).any():
        raise Invalid("bad_separator", field, "the separator merges with the text after it into one token, so the "
                                              "label would land inside the next step; choose a separator (data."
                                              "step_separator) that ends a token, such as a newline")
    if separator_length and not (real & (starts < end) & (ends > end - separator_length)).any():
        raise Invalid("bad_separator", field, "the separator after this step tokenizes into nothing, so the step's "
                                              "end has no token of its own; choose another data.step_separator")
    raise Invalid("bad_separator", field, "no token ends where this step and its separator do")


class StepEncoder:
    """Encodes labelled rows under one length policy: per row its document, prompt length and
    targets, a drop reason, or the row's problem."""

    def __init__(self, tokenizer, max_length: int, truncation: str, labelling: Labelling,
                 ending: Ending = APPEND_EOS):
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation
        self.labelling, self.ending = labelling, ending

    def encode_groups(self, rows: list[LabelledSteps]) -> list:
        """Per row: `RowProblem`, or (documents, prompt lengths, drop reason or None, targets), each
        list holding the row's one document (None when dropped)."""
        return [self._encode(row) for row in rows]

    def _encode(self, row: LabelledSteps):
        try:
            located = locate_steps(self.tokenizer, row, self.ending)
        except Invalid as invalid:
            return RowProblem(row.source, invalid.field, invalid.reason, invalid.message)
        ids, status = fit(located.encoded, self.max_length, self.truncation, self.tokenizer.bos_token_id,
                          self.tokenizer.eos_token_id)
        if ids is None:
            return None, None, status, None
        values = self._targets(row, len(located.label_positions))
        targets = np.full(len(ids), np.nan, dtype=np.float32)
        # Truncating the prompt shifts every position left; truncating the response loses the
        # labels past the cut and the last kept position, which becomes the EOS.
        shift = len(located.encoded.ids) - len(ids) if self.truncation == "truncate_prompt" else 0
        limit = len(ids) if status is None or self.truncation == "truncate_prompt" else len(ids) - 1
        for position, value in zip(located.label_positions, values):
            if 0 <= position - shift < limit:
                targets[position - shift] = value
        if row.outcome and status is not None and self.truncation == "truncate_response":
            targets[-1] = values[0]  # an outcome labels the EOS too
        if np.isnan(targets).all():
            return None, None, "no_labelled_step", None
        return [ids], [kept_prompt_tokens(located.encoded, ids, self.truncation)], None, [targets]

    def _targets(self, row: LabelledSteps, positions: int) -> list[float]:
        """One target per label position."""
        if row.outcome:
            return [float(row.ratings[0])] * positions
        classes = self.labelling.num_classes
        neutral = self.labelling.neutral if classes == 2 else None
        return labels_from_ratings(list(row.ratings), classes, neutral).tolist()
