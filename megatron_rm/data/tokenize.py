"""The one way text becomes token ids, for training, evaluation and scoring.

Plain rows are `prompt + response` with the tokenizer's own special tokens
(BOS where it adds one). Conversational rows are rendered with the tokenizer's
chat template, which writes its special tokens itself, so none are added on
top. How the ids end is the model's (`ending.Ending`): exactly one EOS for the
models trained here, the tokenizer's own ending for a Hugging Face model's.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from megatron_rm.config import TRUNCATION_MODES
from megatron_rm.data.ending import APPEND_EOS, Ending, ending_with_eos
from megatron_rm.data.records import Comparison, Text
from megatron_rm.errors import DataError


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer from a local folder; it must define an EOS token."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such tokenizer folder (model.tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.eos_token_id is None:
        raise DataError(f"{path}: the tokenizer defines no EOS token, which ends every scored text")
    return tokenizer


def reward_tokenizer(model) -> PreTrainedTokenizerBase:
    """A reward model's tokenizer (its `ModelConfig`'s), ending texts as the model reads them
    (`ending`). A policy's is `load_tokenizer(model.tokenizer)`: its prompts must not end in EOS."""
    tokenizer = load_tokenizer(model.tokenizer)
    return ending_with_eos(tokenizer) if model.append_eos else tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Save `tokenizer` to `folder` so that transformers 5 and 4.x both load it.

    transformers 5 names a plain `tokenizer.json` tokenizer's class `TokenizersBackend`, a
    class 4.x does not have (it refuses the folder); `PreTrainedTokenizerFast`, the name 4.x
    wrote for the same thing, loads as the same tokenizer under both.
    """
    tokenizer.save_pretrained(str(folder))
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # Classes that build their post-processor from this flag (4.x's LlamaTokenizerFast) would
    # drop an EOS the post-processor appends (`ending_with_eos`).
    if config.get("add_eos_token") is False and _appends_eos(tokenizer):
        config["add_eos_token"] = True
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id; its value never matters (the attention mask marks padding), so
    EOS stands in when the tokenizer has none, and pad == EOS is fine."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the ids: vocabulary, merges, normalisation,
    special tokens and chat template. Two tokenizers with equal fingerprints encode alike."""
    if tokenizer.is_fast:
        state = tokenizer.backend_tokenizer.to_str()
    else:
        state = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                        getattr(tokenizer, "chat_template", None), tokenizer.all_special_tokens])
    return hashlib.sha256((state + extra).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    prompt_tokens: int
    """How many leading ids belong to the prompt (the only part `truncate_prompt` cuts)."""


def encode(tokenizer: PreTrainedTokenizerBase, prompt: Text, response: Text, ending: Ending = APPEND_EOS) -> Encoded:
    """Ids of one prompt/response text, ending as `ending` says."""
    return encode_many(tokenizer, [(prompt, response)], ending)[0]


def encode_many(tokenizer: PreTrainedTokenizerBase, texts: list[tuple[Text, Text]], ending: Ending = APPEND_EOS,
                special_tokens: bool = True, chat: dict | None = None) -> list[Encoded]:
    """`encode` for many (prompt, response) texts in two tokenizer calls (a fast
    tokenizer's batch call costs about as much as one text's Python overhead).
    `special_tokens=False` tokenizes plain texts without the tokenizer's special tokens (vLLM's
    `add_special_tokens: false`): nothing is added at either end, the EOS included. `chat`: more
    arguments of the chat template (vLLM's `add_generation_prompt`, `chat_template_kwargs`); a
    conversation rendered with a generation prompt is not finished, and gets no EOS."""
    chat = chat or {}
    full = [document_text(tokenizer, prompt, response, special_tokens, chat) for prompt, response in texts]
    prompts = [_prompt_text(tokenizer, prompt, special_tokens, chat) for prompt, _ in texts]
    full_ids = _ids(tokenizer, full)
    unique_prompts = list(dict.fromkeys(prompts))
    prompt_ids = dict(zip(unique_prompts, _ids(tokenizer, unique_prompts)))
    eos = tokenizer.eos_token_id
    append = special_tokens and ending.eos and not _appends_eos(tokenizer)
    plain = [isinstance(prompt, str) and isinstance(response, str) for prompt, response in texts]
    finished = not chat.get("add_generation_prompt")
    return [_with_prompt(ending.finish(ids, eos, text=append and is_plain, conversation=finished and not is_plain),
                         prompt_ids[p] if p[0] else [])
            for ids, p, is_plain in zip(full_ids, prompts, plain)]


_APPENDS_EOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _appends_eos(tokenizer) -> bool:
    """Whether `tokenizer` itself ends a text with the EOS (`ending.ending_with_eos`); asked once."""
    if tokenizer not in _APPENDS_EOS:
        _APPENDS_EOS[tokenizer] = tokenizer("a")["input_ids"][-1:] == [tokenizer.eos_token_id]
    return _APPENDS_EOS[tokenizer]


def document_text(tokenizer: PreTrainedTokenizerBase, prompt: Text, response: Text,
                  special_tokens: bool = True, chat: dict | None = None) -> tuple[str, bool]:
    """(text, add the tokenizer's special tokens?) that `encode_many` tokenizes for one document:
    plain prompt + response, or the conversation rendered by the chat template (with `chat`'s
    arguments)."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt + response, special_tokens
    return _render(tokenizer, [*prompt, *response], **(chat or {})), False


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Text]) -> list[list[int]]:
    """Ids of prompts to generate a response to: exactly the prompt part of what `encode_many`
    makes of (prompt, response), so a generated response continues the ids training and
    scoring see (a plain prompt with the tokenizer's special tokens and no EOS; messages
    rendered by the chat template with its generation prompt)."""
    return _ids(tokenizer, [_prompt_text(tokenizer, prompt) for prompt in prompts])


def _prompt_text(tokenizer, prompt: Text, special_tokens: bool = True, chat: dict | None = None) -> tuple[str, bool]:
    """(text, add the tokenizer's special tokens?) of a prompt."""
    if isinstance(prompt, str):
        return prompt, special_tokens
    chat = {**(chat or {}), "add_generation_prompt": True}
    return (_render(tokenizer, list(prompt), **chat) if prompt else ""), False


def _ids(tokenizer, texts: list[tuple[str, bool]]) -> list[list[int]]:
    """Ids of (text, add the tokenizer's special tokens?) items, one call per flag value."""
    out: list = [None] * len(texts)
    for special in (True, False):
        positions = [i for i, (_, flag) in enumerate(texts) if flag is special]
        if positions:
            encoded = tokenizer([texts[i][0] for i in positions], add_special_tokens=special)["input_ids"]
            for i, ids in zip(positions, encoded):
                out[i] = _single_bos(tokenizer, ids)
    return out


def _single_bos(tokenizer, ids: list[int]) -> list[int]:
    """A text that already starts with the BOS token (a decoded prompt, or a chat-templated
    string handed to a server) gets no second one from the tokenizer."""
    bos = tokenizer.bos_token_id
    return ids[1:] if bos is not None and ids[:2] == [bos, bos] else ids


def _with_prompt(ids: list[int], prompt_ids: list[int]) -> Encoded:
    # BPE merges can straddle the prompt/response boundary, so the prompt's share
    # is the common prefix of the two encodings, never more than the text's tokens.
    shared = 0
    for a, b in zip(ids[:-1], prompt_ids):
        if a != b:
            break
        shared += 1
    return Encoded(ids, shared)


def blank(response: Text) -> bool:
    """Nothing to score: a whitespace-only text, no messages, or a whitespace-only final message."""
    if isinstance(response, str):
        return not response.strip()
    return not response or not response[-1]["content"].strip()


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, **variables) -> str:
    """`messages` through the chat template; `variables` are more of the template's variables."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("conversational rows need a tokenizer with a chat template "
                        f"({tokenizer.name_or_path} has none)")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **variables)
    except TemplateError as error:  # the template's own raise_exception, or a bad variable
        raise DataError(f"the chat template of {tokenizer.name_or_path} cannot render the conversation: "
                        f"{error}") from None


def fit(encoded: Encoded, max_length: int, truncation: str, bos_id: int | None,
        eos_id: int | None) -> tuple[list[int] | None, str | None]:
    """Apply the length policy: (ids, None) when kept, (ids, "truncated") when cut,
    (None, reason) when the text cannot be kept. `eos_id`: a text ending in it still does when
    its response is cut."""
    ids = encoded.ids
    excess = len(ids) - max_length
    if excess <= 0:
        return ids, None
    if truncation == "drop":
        return None, "too_long"
    if truncation == "truncate_prompt":
        # Cut the prompt's oldest tokens; a leading BOS stays, as the model saw in pre-training.
        keep_head = 1 if bos_id is not None and ids[0] == bos_id and encoded.prompt_tokens > 0 else 0
        if encoded.prompt_tokens - keep_head < excess:
            return None, "response_too_long"
        return ids[:keep_head] + ids[keep_head + excess:], "truncated"
    # truncate_response: keep the start, cut the response's tail, end with the EOS again.
    tail = ids[-1:] if eos_id is not None and ids[-1] == eos_id else []
    if encoded.prompt_tokens >= max_length - len(tail):
        return None, "prompt_too_long"
    return ids[: max_length - len(tail)] + tail, "truncated"


def kept_prompt_tokens(encoded: Encoded, kept: list[int], truncation: str) -> int:
    """How many leading ids of `kept` (what `fit` kept of `encoded`) are the prompt's.

    `truncate_prompt` cuts prompt tokens only, so the prompt is shorter by what was cut;
    `truncate_response` keeps the whole prompt (`fit` refuses a text whose prompt does not fit).
    """
    if truncation == "truncate_prompt":
        return encoded.prompt_tokens - (len(encoded.ids) - len(kept))
    return encoded.prompt_tokens


class GroupEncoder:
    """Encodes whole comparisons under one length policy for training and evaluation (scoring
    encodes single texts with the same `encode_many` and `fit`, `scoring.inputs.InputEncoder`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: str,
                 ending: Ending = APPEND_EOS):
        if truncation not in TRUNCATION_MODES:
            raise DataError(f"data.truncation={truncation!r} must be one of {', '.join(TRUNCATION_MODES)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.ending = ending

    def encode_comparison(self, comparison: Comparison) -> tuple[list[list[int]] | None, str | None]:
        return self.encode_comparisons([comparison])[0]

    def encode_comparisons(self, comparisons: list[Comparison]) -> list[tuple[list[list[int]] | None, str | None]]:
        """Per comparison: (documents best first, None), or (None, drop reason) for a
        group that cannot be trained on. A single-response comparison is a group of one."""
        texts = [(c.prompt, response) for c in comparisons for response in c.responses]
        encoded = iter(encode_many(self.tokenizer, texts, self.ending))
        return [self._group([next(encoded) for _ in c.responses]) for c in comparisons]

    def encode_groups(self, comparisons: list[Comparison]) -> list[tuple[list[list[int]] | None, list[int] | None,
                                                                           str | None]]:
        """`encode_comparisons` with each kept document's prompt length: per comparison
        (documents, prompt tokens of each, None), or (None, None, drop reason)."""
        texts = [(c.prompt, response) for c in comparisons for response in c.responses]
        encoded = iter(encode_many(self.tokenizer, texts, self.ending))
        out = []
        for c in comparisons:
            group = [next(encoded) for _ in c.responses]
            documents, reason = self._group(group)
            prompts = None if documents is None else [
                kept_prompt_tokens(one, ids, self.truncation) for one, ids in zip(group, documents)]
            out.append((documents, prompts, reason))
        return out

    def _fit(self, encoded: Encoded) -> tuple[list[int] | None, str | None]:
        return fit(encoded, self.max_length, self.truncation, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id)

    def _group(self, encoded: list[Encoded]) -> tuple[list[list[int]] | None, str | None]:
        documents, truncated = [], False
        for one in encoded:
            ids, status = self._fit(one)
            if ids is None:
                return None, status
            truncated |= status == "truncated"
            documents.append(ids)
        if len({tuple(d) for d in documents}) < len(documents):
            # Equal ids give a zero margin whatever the weights: the group teaches nothing.
            return None, "identical_after_truncation" if truncated else "identical_tokens"
        return documents, None
