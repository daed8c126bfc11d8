"""What one validated data row is, whatever file format or row shape it came from."""

from __future__ import annotations

from dataclasses import dataclass

Messages = tuple  # tuple of {"role": str, "content": str} dicts, in conversation order
Text = str | Messages


@dataclass(frozen=True)
class Comparison:
    """A prompt and its responses ranked best to worst: a preference pair is K = 2,
    a ranking K > 2, and a single response (K = 1, a pointwise row) has nothing to
    be compared with and is judged by its `labels` alone.

    `prompt` and every response are either all strings (plain text, joined as
    prompt + response) or all message tuples (rendered with the tokenizer's chat
    template). A conversational row without a separate prompt has its shared
    leading messages moved into `prompt` (for a single conversation: every message
    before its final one).
    """

    prompt: Text
    responses: tuple[Text, ...]
    """Ranked best first; at least one, no two equal."""
    source: str
    """Where the row came from, for messages: `file:line` or `file:row N`."""
    margin: float | None = None
    """How much better the first response is (pairs only); None when the row has none."""
    labels: tuple[tuple[float, ...], ...] | None = None
    """Per response (same order as `responses`): attribute values, NaN where missing."""

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)
