"""Train the PRM example's small BPE tokenizer and save it as a Hugging Face tokenizer folder.

    python examples/prm/train_tokenizer.py       # writes examples/prm/tokenizer/

The demo's tokenizer (examples/demo/tokenizer) never saw "+", "-", "=" or a capital
letter, so it maps them to <unk> and would erase the arithmetic. This one is trained on
the chains themselves, with the same special tokens (<pad>, </s>, <unk>; no BOS). Every
digit is its own token, so a number's digits line up for checking "a op b = c"; the step
separator "\n" is always a token of its own, never merged, so a step's last token is the
same "\n" whether the step is encoded alone (TRL's prompt + step + "\n" layout) or inside
the whole text. Decoding gives back the exact text.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
# The demo's builder and command line: the same special tokens, digits one per token, exact decoding.
_spec = importlib.util.spec_from_file_location("demo_tokenizer", HERE.parent / "demo" / "train_tokenizer.py")
demo_tokenizer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_tokenizer)


def texts(data_dir: Path):
    for row in demo_tokenizer.rows(data_dir, "steps_train.jsonl", "steps_eval.jsonl"):
        yield row["prompt"] + "".join(step + "\n" for step in row["completions"])


def build(data_dir: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    return demo_tokenizer.bpe(texts(data_dir), vocab_size, isolate="\n")


def main() -> None:
    demo_tokenizer.command_line(__doc__, build, HERE, vocab_size=64)


if __name__ == "__main__":
    main()
