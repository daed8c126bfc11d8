"""Where a reward model reads a text, stated so that transformers, vLLM and this project agree.

The reward is read where transformers reads it: at the last token that is not the pad token.
What differs between models is how a scored text ends, and that belongs to the model's tokenizer:

- models trained here (`model.append_eos`, the default, and every checkpoint saved before the
  field existed) read at an EOS that ends every complete text. Training appends it; the
  tokenizer saved with the model says so too (`ending_with_eos`): its post-processor adds the EOS
  wherever it adds its special tokens, and its chat template ends a conversation with one, so
  `tok(texts, padding=True)` and a stock `*ForSequenceClassification` read where training read;
- a Hugging Face model (imported, or trained from one) reads its own tokenization, nothing
  appended; trailing pad tokens are not read, as transformers skips them, `pad == eos` included.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerBase

_MARK = "{#- megatron-rm: a finished conversation ends with the EOS -#}"
# Renders the tokenizer's own template, then adds the EOS unless the text already ends with it or
# a generation prompt asks for the next turn (the template's output is captured, not re-parsed).
_OPEN = _MARK + "{% set rendered_conversation %}"
_CLOSE = ("{% endset %}{{ rendered_conversation }}"
          "{%- if not add_generation_prompt and not rendered_conversation.endswith(eos_token) %}"
          "{{ eos_token }}{% endif %}")


@dataclass(frozen=True)
class Ending:
    """How one model's scored ids end; see the module docstring."""

    eos: bool = True
    """Complete texts end in the EOS, as `ending_with_eos`'s tokenizer ends them (appended to a plain
    text, to a conversation unless it already ends in one)."""
    pad_token_id: int | None = None
    """With `eos` false: the pad id transformers skips when it reads (the model's config.json)."""

    @classmethod
    def of(cls, model) -> Ending:
        """The ending of a `ModelConfig`."""
        return cls(model.append_eos, None if model.append_eos else model.pad_token_id)

    def finish(self, ids: list[int], eos_id: int, *, text: bool = False, conversation: bool = False) -> list[int]:
        """`ids` as the model reads them, made as `ending_with_eos`'s tokenizer makes them:
        `text`, a plain text's ids with the special tokens of a tokenizer that does not append
        the EOS itself, gets one; `conversation`, a rendered conversation's, gets one unless it
        ends in it. Other ids are read as given."""
        if self.eos:
            if text or (conversation and ids[-1:] != [eos_id]):
                ids.append(eos_id)
        elif self.pad_token_id is not None:
            while ids and ids[-1] == self.pad_token_id:
                ids.pop()
        return ids


APPEND_EOS = Ending()
"""The ending of the models trained here."""


def ending_with_eos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` whose own encoding ends texts as `Ending(eos=True)` does: its
    post-processor appends the EOS after the special tokens it already adds, and its chat
    template ends a finished conversation with the EOS. Already such a tokenizer: unchanged."""
    tokenizer = copy.deepcopy(tokenizer)
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    probe = "reward"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    prefix, suffix = full[:start], full[start + len(plain):]
    if suffix[-1:] != [eos_id]:
        if not tokenizer.is_fast:
            raise ValueError(f"{tokenizer.name_or_path}: only a fast tokenizer's post-processor can append the EOS")
        ends = [*prefix, *suffix, eos_id]
        names = tokenizer.convert_ids_to_tokens(ends)
        head, tail = names[:len(prefix)], names[len(prefix):]
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=" ".join([*head, "$A", *tail]), pair=" ".join([*head, "$A", "$B:1", *(n + ":1" for n in tail)]),
            special_tokens=sorted(set(zip(names, ends))))
        if tokenizer(probe)["input_ids"] != [*full, eos_id]:
            raise ValueError(f"{tokenizer.name_or_path}: could not make the tokenizer end texts with {eos!r}")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and not template.startswith(_MARK):
        tokenizer.chat_template = _OPEN + template + _CLOSE
    return tokenizer


def without_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` whose own encoding adds no special tokens to a text (no BOS): how NeMo
    tokenizes (`text_to_ids`), so that a model imported from it reads the ids it was trained on.
    Already such a tokenizer: unchanged."""
    probe = "reward"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if tokenizer(probe)["input_ids"] == plain:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    for flag in ("add_bos_token", "add_eos_token"):  # classes that rebuild their post-processor from these
        if getattr(tokenizer, flag, False):
            setattr(tokenizer, flag, False)
    if tokenizer(probe)["input_ids"] != plain:
        if not tokenizer.is_fast:
            raise ValueError(f"{tokenizer.name_or_path}: only a fast tokenizer's post-processor can be made to add "
                             "no special tokens")
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B:1")
    return tokenizer
