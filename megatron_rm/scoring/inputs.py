"""What gets scored, as token ids: (prompt, response) texts, chat conversations, whole
strings or ids given by the caller, all through training's tokenization (`data.tokenize`),
ending as the model reads them (`data.ending`); ids given by the caller are scored as given.

An input longer than the limit follows one explicit policy:
- `error`: it is refused (a row error, a 4xx for a request) and nothing is cut;
- `truncate_prompt`: the prompt's oldest tokens are cut (a leading BOS stays), the whole
  response and the EOS that ends it are kept and the input is flagged `truncated`; when the response
  alone does not fit, it is refused.
A reward is therefore never read in the middle of a response.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from megatron_rm.data.ending import APPEND_EOS, Ending
from megatron_rm.data.records import Text
from megatron_rm.data.tokenize import blank, encode_many, fit

LENGTH_POLICIES = ("error", "truncate_prompt")
ENCODING_REASONS = {"empty": "empty_response", "too_long": "too_long", "bad_input_ids": "bad_input_ids",
                    "bad_text": "bad_text"}
"""The encoder's reasons as row-problem reasons (training's parser never meets bad_input_ids)."""


@dataclass(frozen=True)
class Encoded:
    """One input's ids, or why it cannot be scored."""

    ids: list[int] | None
    truncated: bool = False
    error: str | None = None
    """Why there are no ids: a sentence naming the problem."""
    reason: str | None = None
    """The error's kind, for counting: "empty", "too_long", "bad_input_ids" or "bad_text"."""
    position: int | None = None
    """For bad_input_ids: where in the ids the first bad one is."""


class InputEncoder:
    """Turns scoring inputs into ids under one length policy; the tokenizer is the model's own."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, policy: str = "error",
                 ending: Ending = APPEND_EOS):
        if policy not in LENGTH_POLICIES:
            raise ValueError(f"length policy {policy!r} must be one of {', '.join(LENGTH_POLICIES)}")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for a response and its EOS")
        self.tokenizer, self.max_length, self.policy, self.ending = tokenizer, max_length, policy, ending
        # A token spans at most the vocabulary's longest entry; a normalizer may fold two characters
        # into one (NFKC). Past this many characters a text cannot fit, whatever it holds, and is
        # refused without tokenizing it: a request of megabytes costs nothing.
        self.max_chars = 2 * max_length * max(map(len, tokenizer.get_vocab()))

    def texts(self, texts: list[tuple[Text, Text]], special_tokens: bool = True,
              chat: dict | None = None) -> list[Encoded]:
        """(prompt, response) pairs: strings are joined as prompt + response with the tokenizer's
        special tokens (none with `special_tokens=False`, vLLM's `add_special_tokens`); message
        tuples are rendered with its chat template (training's rule; `chat`: more of the
        template's arguments, see `data.tokenize.encode_many`)."""
        out: list[Encoded | None] = [None] * len(texts)
        kept = []
        for index, (prompt, response) in enumerate(texts):
            if blank(response):
                out[index] = Encoded(None, error="empty response: nothing to score", reason="empty")
            elif (problem := _not_unicode(prompt) or _not_unicode(response)) is not None:
                out[index] = Encoded(None, error=problem, reason="bad_text")
            elif (chars := _chars(response) + (_chars(prompt) if self.policy == "error" else 0)) > self.max_chars:
                out[index] = Encoded(None, error=f"{chars} characters cannot fit in {self.max_length} tokens "
                                                 "(refused before tokenizing)", reason="too_long")
            else:
                kept.append(index)
        for index, encoded in zip(kept, encode_many(self.tokenizer, [texts[i] for i in kept], self.ending,
                                                    special_tokens, chat)):
            out[index] = self.fit(encoded)
        return out

    def whole_texts(self, texts: list[str], special_tokens: bool = True) -> list[Encoded]:
        """Strings that already hold prompt and response (OpenRLHF's queries, vLLM's `input`);
        with no prompt boundary known, an over-long one is refused under either policy."""
        return self.texts([("", text) for text in texts], special_tokens)

    def messages(self, conversations: list[tuple]) -> list[Encoded]:
        """Whole conversations (message tuples): the final message is the response."""
        return self.texts([(conversation[:-1], conversation[-1:]) for conversation in conversations])

    def token_ids(self, sequences: list[list[int]]) -> list[Encoded]:
        """Ids made by the caller with this model's tokenizer, scored as given: read at the last
        one that is not the model's pad token, as transformers reads them."""
        return [self._ids(list(ids)) for ids in sequences]

    def _ids(self, ids: list) -> Encoded:
        vocab = len(self.tokenizer)
        for position, token in enumerate(ids):
            if type(token) is not int or not 0 <= token < vocab:
                return Encoded(None, error=f"input_ids[{position}]={token!r} is not a token id "
                                           f"(a whole number in [0, {vocab}))", reason="bad_input_ids",
                               position=position)
        ids = self.ending.finish(ids, self.tokenizer.eos_token_id)
        if not ids:
            return Encoded(None, error="input_ids holds no token to read a reward at (none, or only pad tokens)",
                           reason="empty")
        if len(ids) > self.max_length:
            return Encoded(None, error=self._too_long(len(ids)), reason="too_long")
        return Encoded(ids)

    def fit(self, encoded) -> Encoded:
        """Training's encoding (`data.tokenize.Encoded`: ids and prompt length) under the policy."""
        truncation = "drop" if self.policy == "error" else "truncate_prompt"
        ids, status = fit(encoded, self.max_length, truncation, self.tokenizer.bos_token_id,
                          self.tokenizer.eos_token_id)
        if ids is None:
            return Encoded(None, error=self._too_long(len(encoded.ids), status), reason="too_long")
        return Encoded(ids, truncated=status == "truncated")

    def _too_long(self, length: int, status: str | None = None) -> str:
        message = f"{length} tokens exceed the limit of {self.max_length}"
        if status == "response_too_long":
            return message + ": the response alone does not fit (only the prompt may be cut)"
        if self.policy == "error":
            return message + " (length policy 'error'; 'truncate_prompt' cuts the prompt's oldest tokens)"
        return message + " (no prompt to cut)"


def _contents(text: Text) -> list[str]:
    """The strings of a text: itself, or each message's content."""
    return [text] if isinstance(text, str) else [message["content"] for message in text]


def _chars(text: Text) -> int:
    return sum(map(len, _contents(text)))


def _not_unicode(text: Text) -> str | None:
    """Why `text` (a string or messages) cannot be tokenized, or None. JSON's escapes can spell a
    lone UTF-16 surrogate (`"\\ud800"`), which no tokenizer takes."""
    for part in _contents(text):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError as error:
            return (f"not valid Unicode: a lone surrogate {part[error.start]!r} at character {error.start} "
                    "(send UTF-8 text)")
    return None
