"""Rewards from a token head (outcome and process reward models, `model.head=token`): where a
response's reward is read and how its per-token class logits become one number.

A response is a stepwise solution (a list of steps) or an outcome text (a string, or chat
messages); the value's JSON type decides, everywhere (file rows, server requests):
- steps are written as training wrote them (prompt, then each step and the separator, then
  EOS the model reads at, if it does; `data.step_tokens.locate_steps`), and each step's reward is the positive-class
  probability at the token ending it; the response's reward is their aggregate;
- an outcome's reward is the aggregate of the positive-class probabilities at every
  response token and the EOS, if the model reads one (where an outcome reward model learnt it).
A string is never split into steps: a text's line breaks need not be the steps the model
was trained on, so a caller who has steps sends them as a list.

The defaults come from the checkpoint's `token_scores` (what training stored: the loss, its
aggregation, the step separator and Math-Shepherd's step tag); without them (a Hugging Face
`*ForTokenClassification` folder), product over steps, mean over an outcome's tokens, and
a newline after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_rm.data.rows import Invalid, RowKeys, RowProblem
from megatron_rm.data.sources import RawRow
from megatron_rm.data.step_tokens import locate_steps
from megatron_rm.data.steps import LabelledSteps, Labelling, parse_outcome, parse_steps
from megatron_rm.objectives.step_rewards import aggregate, positive_probability
from megatron_rm.scoring.inputs import ENCODING_REASONS, InputEncoder

STEP_AGGREGATION, OUTCOME_AGGREGATION = "product", "mean"
"""Without a trained checkpoint's choice: Lightman et al.'s product over steps; an outcome
reward model's mean over its tokens (what `loss.aggregation: null` means in training)."""


@dataclass(frozen=True)
class TokenReading:
    """How responses are laid out and their rewards aggregated."""

    step_aggregation: str = STEP_AGGREGATION
    outcome_aggregation: str = OUTCOME_AGGREGATION
    labelling: Labelling = field(default_factory=Labelling)
    """The separator written after each step, and the step tag of Math-Shepherd rows."""

    @classmethod
    def of(cls, stored: dict | None, num_classes: int, aggregation: str | None = None,
           separator: str | None = None) -> TokenReading:
        """From a checkpoint's `token_scores` (None: none stored); `aggregation` and `separator`
        override it. The stored aggregation is the default of the kind of rows it was trained on."""
        stored = stored or {}
        trained = stored.get("aggregation")
        step = trained if stored.get("loss") == "prm" and trained else STEP_AGGREGATION
        outcome = trained if stored.get("loss") == "orm" and trained else OUTCOME_AGGREGATION
        labelling = Labelling(num_classes=num_classes,
                              separator=stored.get("step_separator", "\n") if separator is None else separator,
                              step_tag=stored.get("step_tag", Labelling.step_tag))
        return cls(aggregation or step, aggregation or outcome, labelling)

    def how(self, outcome: bool) -> str:
        return self.outcome_aggregation if outcome else self.step_aggregation

    def describe(self) -> str:
        return (f"steps: {self.step_aggregation} of step probabilities, separator "
                f"{self.labelling.separator!r}; outcomes: {self.outcome_aggregation} over response tokens")


def parse_response(reading: TokenReading, location: str, prompt, value, name: str,
                   prompt_name: str = "prompt") -> LabelledSteps:
    """One response under `prompt`: a list of strings is its steps, anything else an outcome
    (a text or messages), validated by training's parsers with problems naming `name` (and
    `name[i]` for step i). Raises `Invalid`."""
    keys = RowKeys(prompt=prompt_name, response=name, completions=name)
    raw = RawRow(location, {prompt_name: prompt, name: value})
    stepwise = isinstance(value, list) and (not value or isinstance(value[0], str))
    parse = parse_steps if stepwise else parse_outcome
    return checked(parse(raw, keys, reading.labelling, scoring=True))


def checked(parsed: LabelledSteps | RowProblem) -> LabelledSteps:
    if isinstance(parsed, RowProblem):
        raise Invalid(parsed.reason, parsed.field, parsed.message)
    return parsed


@dataclass(frozen=True)
class Located:
    """One response as the model reads it: its ids (ending in EOS) and the positions its
    reward is read at (each step's last token, or every response token and the EOS)."""

    ids: list[int]
    positions: list[int]
    outcome: bool
    truncated: bool = False


def locate(encoder: InputEncoder, parsed: LabelledSteps, name: str | None) -> Located:
    """`parsed` as ids under the encoder's length policy; `Invalid` naming the step, or `name`
    (the response's field) when it does not fit."""
    found = locate_steps(encoder.tokenizer, parsed, encoder.ending)
    fitted = encoder.fit(found.encoded)
    if fitted.ids is None:
        raise Invalid(ENCODING_REASONS.get(fitted.reason, fitted.reason), name, fitted.error)
    # Only the prompt's oldest tokens are ever cut, so every read position moves left alike.
    shift = len(found.encoded.ids) - len(fitted.ids)
    return Located(fitted.ids, [position - shift for position in found.label_positions], parsed.outcome,
                   fitted.truncated)


def read(logits: torch.Tensor, located: Located, reading: TokenReading) -> tuple[float, list[float] | None]:
    """(the response's reward, its step rewards or None for an outcome) from its (tokens,
    classes) logits."""
    probabilities = positive_probability(logits[located.positions])
    reward = float(aggregate(probabilities, reading.how(located.outcome)))
    return reward, None if located.outcome else probabilities.tolist()
