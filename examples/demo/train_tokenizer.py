"""Train the demo's small BPE tokenizer and save it as a Hugging Face tokenizer folder.

    python examples/demo/train_tokenizer.py      # writes examples/demo/tokenizer/

It loads through `transformers.AutoTokenizer` like any real model's tokenizer,
so the demo exercises the same code path. Digits are split one per token, and decoding
gives back the exact text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from megatron_rm.data import save_tokenizer

HERE = Path(__file__).resolve().parent
SPECIAL = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def texts(data_dir: Path):
    for name in ("train.jsonl", "eval.jsonl"):
        with (data_dir / name).open(encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                yield row["prompt"] + row["chosen"]
                yield row["prompt"] + row["rejected"]


def bpe(texts: Iterable[str], vocab_size: int, isolate: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-pair tokenizer trained on `texts`; what the regex `isolate` matches is always
    a token of its own."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    # Spaces become part of the next token ("▁word"), so decoding gives back the exact text
    # (generated responses are decoded, then scored as text); "never" adds no leading space.
    # Splitting `isolate` off first means no merge can ever glue it to a neighbour.
    splits = [pre_tokenizers.Split(Regex(isolate), behavior="isolated")] if isolate else []
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        *splits,
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()))
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL)


def build(data_dir: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    return bpe(texts(data_dir), vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--out-dir", type=Path, default=HERE / "tokenizer")
    parser.add_argument("--vocab-size", type=int, default=384)
    args = parser.parse_args()
    tokenizer = build(args.data_dir, args.vocab_size)
    save_tokenizer(tokenizer, args.out_dir)  # loadable by transformers 4.x too
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out_dir}")


if __name__ == "__main__":
    main()
