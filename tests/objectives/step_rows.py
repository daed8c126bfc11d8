"""Small step-labelled data sets on the demo's vocabulary, for ORM/PRM tests.

A prompt asks for items of a category; each step names one item, and a step is
wrong when it names an animal (no prompt asks for animals). A tiny model learns
that from the step's own words in a few dozen steps, which is what tests of
training need; the demo tokenizer knows every word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from examples.demo.make_data import CATEGORIES


def _solution(rng: random.Random) -> tuple[str, list[str], list[bool]]:
    category = rng.choice(sorted(set(CATEGORIES) - {"animals"}))
    steps, right = [], []
    for number in range(1, rng.randint(1, 4) + 1):
        good = rng.random() < 0.7
        item = rng.choice(CATEGORIES[category if good else "animals"])
        steps.append(f"{number}. {item}")
        right.append(good)
    return f"User: Name {len(steps)} {category}.\nAssistant:", steps, right


def stepwise_rows(count: int, seed: int = 0) -> list[dict]:
    """TRL stepwise rows; labels cycle through the formats: bools, PRM800K ratings (-1 for a wrong
    step, neutral 0 for some right ones) and soft probabilities."""
    rng, rows = random.Random(seed), []
    for index in range(count):
        prompt, steps, right = _solution(rng)
        style = index % 3
        if style == 0:
            labels = right
        elif style == 1:
            labels = [(0 if rng.random() < 0.3 else 1) if good else -1 for good in right]
        else:
            labels = [0.9 if good else 0.1 for good in right]
        rows.append({"prompt": prompt, "completions": steps, "labels": labels})
    return rows


def outcome_rows(count: int, seed: int = 0) -> list[dict]:
    """ORM rows: the steps as one response, labelled 1 when every step is right."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, steps, right = _solution(rng)
        rows.append({"prompt": prompt, "response": " " + " ".join(steps), "label": int(all(right))})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
