"""Read exported folders with transformers 4.x, as a user still on it would.

    PYTHONPATH=.venv/transformers4 python tests/convert/transformers4_worker.py --folders A B ... --ids FILE --out FILE

Run under the transformers 4.57 that `make install` puts in `.venv/transformers4` (with its own
huggingface_hub and tokenizers). For each folder, by its `architectures`: the version, the RoPE
settings 4.x read, the logits of the ids in --ids, and the ids its tokenizer gives --text.
"""

import argparse
from pathlib import Path

import torch
import transformers

CLASSES = {"ForSequenceClassification": transformers.AutoModelForSequenceClassification,
           "ForTokenClassification": transformers.AutoModelForTokenClassification,
           "ForCausalLM": transformers.AutoModelForCausalLM}


@torch.no_grad()
def read(folder: Path, ids: torch.Tensor, mask: torch.Tensor, text: str) -> dict:
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = next(cls for suffix, cls in CLASSES.items() if config.architectures[0].endswith(suffix))
    model = cls.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return {"version": transformers.__version__,
            "rope_theta": getattr(config, "rope_theta", None), "rope_scaling": getattr(config, "rope_scaling", None),
            "logits": model(input_ids=ids, attention_mask=mask).logits, "text_ids": tokenizer(text).input_ids,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folders", type=Path, nargs="+", required=True)
    parser.add_argument("--ids", type=Path, required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ids, mask = torch.load(args.ids)
    torch.save({folder.name: read(folder, ids, mask, args.text) for folder in args.folders}, args.out)


if __name__ == "__main__":
    main()
