"""Real tokenizer variants built from the demo tokenizer, saved to disk like any HF tokenizer folder."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from megatron_rm.data.tokenize import load_tokenizer
from tests.conftest import DEMO

# ChatML, as Qwen2 and many others write it; a real Jinja template rendered by transformers.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_variant(folder: Path, *, pad: str | None = "<pad>", bos: bool = False, chat: bool = False) -> Path:
    """The demo vocabulary with a chosen pad token (None: no pad; "</s>": pad == EOS),
    optionally a BOS that every encoding starts with, and optionally a ChatML template."""
    backend = Tokenizer.from_file(str(DEMO / "tokenizer" / "tokenizer.json"))
    special = {}
    if bos:
        backend.add_special_tokens(["<s>"])
        bos_id = backend.token_to_id("<s>")
        backend.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)])
        special["bos_token"] = "<s>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                        pad_token=pad, **special)
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(str(folder))
    return folder


def load_variant(folder: Path, **options):
    return load_tokenizer(save_variant(folder, **options))
