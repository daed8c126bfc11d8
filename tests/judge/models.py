"""Tiny real judges for the tests, and a judge written with plain `transformers` to check ours.

`save_judges` writes a random tiny policy checkpoint (the demo vocabulary with a ChatML chat
template), its `*ForCausalLM` export (`export_hf`), a copy of the export whose tokenizer has no
chat template (plain-text prompts), and a copy whose final norm is zero (every logit 0: a
judge that cannot tell, so every preference is exactly 0.5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch
import transformers

from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.convert import export_hf
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import DEFAULT_MODEL
from megatron_rm.judge import DEFAULT_TEMPLATE
from megatron_rm.model import build_policy_model
from tests.conftest import DEMO, tiny_model_config
from tests.data.tokenizer_variants import load_variant

LABELS = ("1", "2")
"""Single tokens of the demo vocabulary (its "B" is unknown)."""
ROWS = [
    {"prompt": "Write a numbered list of 3 colors.", "chosen": "1. red\n2. blue\n3. green",
     "rejected": "1. red\n2. blue", "subset": "lists"},
    {"prompt": [{"role": "user", "content": "Give me 2 sports."}], "response_a": "1. golf\n2. polo",
     "response_b": "1. golf", "subset": "lists", "id": 7},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
     "chosen": "apple", "rejected": "a car", "subset": "chat"},
    {"prompt": "Name a fruit.", "chosen": "1. lime", "rejected": "1. lime", "subset": "chat"},
]


def pairs(count: int) -> list[dict]:
    """ROWS, then the demo's held-out pairs, `count` in all, in two more subsets."""
    demo = [json.loads(line) for line in (DEMO / "data" / "eval.jsonl").read_text().splitlines()]
    extra = [{**row, "subset": ("demo-a", "demo-b")[index % 2]} for index, row in enumerate(demo)]
    return (ROWS + extra)[:count]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def save_judges(root: Path) -> dict[str, Path]:
    """{"policy": checkpoint, "hf": its export, "plain": the export without a chat template,
    "blind": the export with a zero final norm}. Written from the in-process rank."""
    config = dataclasses.replace(tiny_model_config(), max_sequence_length=1024, init_method_std=0.2)
    tokenizer = load_variant(root / "tokenizer", chat=True)
    torch.manual_seed(5)  # std 0.2 rather than 0.02: verdicts far from 0.5 and from each other
    module = build_policy_model(config, ParallelConfig(), len(tokenizer))
    state = checkpoint.ModelState(module, config, padded_vocab_size(len(tokenizer), config), kind="policy")
    made = {"policy": checkpoint.save(root / "policy", 0, {DEFAULT_MODEL: state}, tokenizer=tokenizer)}
    made["hf"] = export_hf(made["policy"], root / "hf", kind="policy")
    made["plain"] = shutil.copytree(made["hf"], root / "plain")
    (made["plain"] / "chat_template.jinja").unlink()
    transformers.AutoTokenizer.from_pretrained(str(DEMO / "tokenizer")).save_pretrained(str(made["plain"]))
    made["blind"] = root / "blind"
    blind = transformers.AutoModelForCausalLM.from_pretrained(str(made["hf"]))
    with torch.no_grad():
        blind.model.norm.weight.zero_()
    blind.save_pretrained(made["blind"])
    transformers.AutoTokenizer.from_pretrained(str(made["hf"])).save_pretrained(str(made["blind"]))
    return made


def reference_verdicts(folder: Path, rows: list[dict], labels: tuple[str, str] = LABELS) -> list[dict]:
    """Each row's verdict by `transformers` alone: the template filled with str.format, rendered by
    the tokenizer's chat template (plain text + "\\nAnswer:" without one), each prompt run alone,
    p(label A) = softmax of the two label tokens' next-token logits, averaged over both orders."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    label_ids = tokenizer.convert_tokens_to_ids(list(labels))  # "1" after "\n" or ":" is the bare digit

    def probabilities(question: str, answer_a: str, answer_b: str) -> torch.Tensor:
        text = DEFAULT_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b,
                                       label_a=labels[0], label_b=labels[1])
        if tokenizer.chat_template:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text + "\nAnswer:")["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        return logits.log_softmax(-1)[label_ids].exp()  # p(A), p(B) over the whole vocabulary

    verdicts = []
    for row in rows:
        first, second = (row["chosen"], row["rejected"]) if "chosen" in row else (row["response_a"], row["response_b"])
        prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[0]["content"] if len(prompt) == 1 else "\n\n".join(
                f"{message['role'].capitalize()}: {message['content']}" for message in prompt)
        one, two = probabilities(prompt, first, second), probabilities(prompt, second, first)
        as_a, as_b = float(one[0] / one.sum()), float(two[1] / two.sum())
        verdicts.append({"preference": (as_a + as_b) / 2, "preference_as_a": as_a, "preference_as_b": as_b,
                         "label_mass": float(one.sum() + two.sum()) / 2})
    return verdicts


def direct_report(preferences: list[float], bins: int = 10) -> dict:
    """Accuracy (ties wrong), ties and ECE of preferences, computed here from the numbers alone."""
    confidence = [max(p, 1 - p) for p in preferences]
    correct = [p > 0.5 for p in preferences]
    per_bin = [[0, 0.0, 0] for _ in range(bins)]
    for value, right in zip(confidence, correct):
        counts = per_bin[min(math.floor((value - 0.5) * 2 * bins), bins - 1)]
        counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + value, counts[2] + right
    return {"pairs": len(preferences), "accuracy": sum(correct) / len(preferences),
            "ties": sum(p == 0.5 for p in preferences),
            "ece": sum(abs(right - total) for _, total, right in per_bin) / len(preferences)}
