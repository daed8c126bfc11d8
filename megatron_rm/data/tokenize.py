"""The one way text becomes token ids, for training, evaluation and scoring."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

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


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> list[int]:
    """Ids of prompt + response with the tokenizer's special tokens and exactly one EOS at the end.

    The reward is read at the last token, so every scored text must end the
    same way: trailing EOS tokens the text already carries are replaced by one.
    """
    ids = tokenizer(prompt + response, add_special_tokens=True)["input_ids"]
    while ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids + [tokenizer.eos_token_id]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id; the value never matters (padding is masked), EOS stands in if unset."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
