"""Token-head (outcome and process) reward models for the scoring tests, and the plain
per-document reference their scores must equal.

A random `*ForTokenClassification` folder stands in for a trained model: its transformers
model is the outside reference, and `import_hf` makes it one of our checkpoints, to which
`token_checkpoint` adds the `token_scores` metadata training writes (from the objective's own
`checkpoint_metadata`, so a change there reaches these tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_rm.config import REWARD, DataConfig, LossConfig
from megatron_rm.convert import import_hf
from megatron_rm.core.checkpoint_files import METADATA
from megatron_rm.data import document_batch, pad_id
from megatron_rm.loading.models import find
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.objectives.step_rewards import aggregate, positive_probability
from megatron_rm.objectives.token_classification import OutcomeRM, ProcessRM
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.scoring.token.scores import Located
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant


def save_token_model(folder: Path, num_labels: int = 2, seed: int = 11):
    """A tiny Llama token classifier with a ChatML tokenizer; returns its transformers model."""
    reference = save_model("llama", folder, "token_classification", num_labels=num_labels, seed=seed)
    save_variant(folder, chat=True)
    return reference


def token_checkpoint(hf_folder: Path, out: Path, loss: str = "prm", aggregation: str | None = None,
                     separator: str = "\n") -> Path:
    """`hf_folder` as our checkpoint, with the `token_scores` a `loss.type=loss` run stores."""
    import_hf(hf_folder, out)
    num_classes = find(out, REWARD).config.num_labels
    objective = {"prm": ProcessRM, "orm": OutcomeRM}[loss](
        LossConfig(type=loss, num_classes=num_classes, aggregation=aggregation), num_labels=num_classes)
    metadata = json.loads((out / METADATA).read_text())
    metadata.update(objective.checkpoint_metadata(DataConfig(step_separator=separator)))
    (out / METADATA).write_text(json.dumps(metadata))
    return out


# Rows of every shape a token-head model scores (see megatron_rm/scoring/token/rows.py).
STEPS = ["2+3 means adding 3 to 2.", "That gives 5.", "The answer is 5."]


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


ROWS = [
    {"id": "steps", "prompt": "What is 2+3?", "completions": STEPS, "labels": [True, True, False]},
    {"id": "shepherd", "input": "Add 2 and 3. Step 1: 2+3=5 ки Step 2: The answer is 5 ки", "label": "ignored"},
    {"id": "outcome", "prompt": "What is 2+3?", "response": " It is 5, since 2+3 is 5."},
    {"id": "chat", "messages": [user("What is 2+3?"), bot("5")]},
    {"id": "chat steps", "prompt": [user("Count to two.")], "completions": ["one", "two"]},
    {"id": "best of n", "prompt": "Count to three.",
     "responses": [["one", "two", "three"], ["one two"], " one two three",
                   ["a much longer first step that goes on", "then"]]},
    {"id": "pair", "prompt": "Pick a colour.", "chosen": ["red", "and blue"], "rejected": " green"},
]


def written(row: dict) -> list[tuple[float, list[float] | None]]:
    """(reward, step rewards) per response of a scored row, in the row's order."""
    if "reward" in row:
        return [(row["reward"], row.get("step_rewards"))]
    if "chosen_reward" in row:
        return [(row[f"{key}_reward"], row.get(f"{key}_step_rewards")) for key in ("chosen", "rejected")]
    return list(zip(row["rewards"], row.get("step_rewards", [None] * len(row["rewards"]))))


@torch.no_grad()
def alone(scorer: Scorer, ids: list[int]) -> torch.Tensor:
    """One document's (tokens, classes) logits from the model itself: one document per forward,
    no padding, no planning, no data-parallel sum."""
    batch = document_batch([ids], pad_id(scorer.model.tokenizer))
    return forward_documents(scorer.model.chunks[0], batch, token_values=True)[0].float()


def reference(scorer: Scorer, located: Located, how: str) -> tuple[float, list[float]]:
    """(the reward, the probabilities read) of one located response, scored alone."""
    probabilities = positive_probability(alone(scorer, located.ids)[located.positions])
    return float(aggregate(probabilities, how)), probabilities.tolist()
