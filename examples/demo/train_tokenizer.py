"""Train the demo's small BPE tokenizer and save it as a Hugging Face tokenizer folder.

    python examples/demo/train_tokenizer.py      # writes examples/demo/tokenizer/

It loads through `transformers.AutoTokenizer` like any real model's tokenizer,
so the demo exercises the same code path. Digits are split one per token, and decoding
gives back the exact text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from megatron_rm.data import save_tokenizer

HERE = Path(__file__).resolve().parent
SPECIAL = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def rows(data_dir: Path, *names: str) -> Iterator[dict]:
    """The rows of the JSONL files `names` in `data_dir`, in order."""
    for name in names:
        with (data_dir / name).open(encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)


def texts(data_dir: Path):
    for row in rows(data_dir, "train.jsonl", "eval.jsonl"):
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


def command_line(description: str, build: Callable[[Path, int], PreTrainedTokenizerFast], here: Path,
                 vocab_size: int) -> None:
    """A tokenizer trainer's command line: `build` from here/data, saved to here/tokenizer by default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=here / "data")
    parser.add_argument("--out-dir", type=Path, default=here / "tokenizer")
    parser.add_argument("--vocab-size", type=int, default=vocab_size)
    args = parser.parse_args()
    tokenizer = build(args.data_dir, args.vocab_size)
    save_tokenizer(tokenizer, args.out_dir)  # loadable by transformers 4.x too
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out_dir}")


def main() -> None:
    command_line(__doc__, build, HERE, vocab_size=384)


if __name__ == "__main__":
    main()
