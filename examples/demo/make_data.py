"""Synthetic preference pairs whose winner depends on the prompt.

    python examples/demo/make_data.py            # writes examples/demo/data/{train,eval}.jsonl

Each prompt asks for a numbered list of N items of a category. The chosen
response lists exactly N items; the rejected one is the same list with one item
more or one fewer, so it nearly complies. The two counts of a pair are always
adjacent (k and k + 1) and the prompt asks for either with equal probability,
so a response's length or count says nothing on its own about whether it wins:
a model that ignores the prompt is held near 50%, while reading N from the
prompt and comparing it with the last list number decides every pair.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CATEGORIES = {
    "fruits": "apple pear plum fig grape lemon mango peach cherry melon kiwi lime".split(),
    "animals": "cat dog horse cow sheep goat fox wolf bear deer otter mouse".split(),
    "colors": "red blue green yellow purple orange pink brown black white gray teal".split(),
    "tools": "hammer saw drill wrench chisel file rake shovel axe ladder clamp level".split(),
    "cities": "paris rome tokyo lima cairo oslo delhi quito dublin seoul lagos perth".split(),
    "sports": "tennis golf rugby hockey rowing boxing judo cricket polo skiing surfing fencing".split(),
}
ASKS = ("List {n} {category}.", "Name {n} {category}.", "Give me {n} {category}.",
        "Write a numbered list of {n} {category}.")
MAX_COUNT = 8
HERE = Path(__file__).resolve().parent


def numbered(items: list[str]) -> str:
    return " " + " ".join(f"{i}. {item}" for i, item in enumerate(items, start=1))


def make_pair(rng: random.Random) -> dict:
    category = rng.choice(sorted(CATEGORIES))
    low = rng.randint(1, MAX_COUNT - 1)
    items = rng.sample(CATEGORIES[category], low + 1)
    asked = rng.choice((low, low + 1))
    other = low + 1 if asked == low else low
    prompt = "User: " + rng.choice(ASKS).format(n=asked, category=category) + "\nAssistant:"
    return {"prompt": prompt, "chosen": numbered(items[:asked]), "rejected": numbered(items[:other])}


def asked_count(prompt: str) -> int:
    """The N a prompt asks for (the rule's own reading, used by tests)."""
    return next(int(word) for word in prompt.split() if word.isdigit())


def listed_count(response: str) -> int:
    """How many numbered items a response lists."""
    return sum(1 for word in response.split() if word.endswith(".") and word[:-1].isdigit())


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def generate(num_train: int, num_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and eval rows; no eval row repeats a train row, so eval is truly held out."""
    rng = random.Random(seed)
    train = [make_pair(rng) for _ in range(num_train)]
    seen = {tuple(row.values()) for row in train}
    held_out = []
    while len(held_out) < num_eval:
        row = make_pair(rng)
        if tuple(row.values()) not in seen:
            held_out.append(row)
    return train, held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=HERE / "data")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held_out = generate(args.num_train, args.num_eval, args.seed)
    write(args.out_dir / "train.jsonl", train)
    write(args.out_dir / "eval.jsonl", held_out)
    print(f"wrote {len(train)} train and {len(held_out)} eval pairs to {args.out_dir}")


if __name__ == "__main__":
    main()
