"""Synthetic step-labelled arithmetic chains for process (PRM) and outcome (ORM) reward models.

    python examples/prm/make_data.py             # writes examples/prm/data/{steps,outcome}_{train,eval}.jsonl

Each prompt is a short sum of one-digit numbers; a solution works it left to right, one
step per line, each step continuing from the previous step's result:

    prompt:  "Compute 7-3+4-2.\n"
    steps:   "7-3=4", "4+4=8", "8-2=6"

Half the solutions go wrong at one step, spread evenly over the steps: that step drops
its operation and writes the running value unchanged ("4+4=4"). After it the solver
either keeps dropping every operation (it stalls: "4-2=4") or goes on computing right
from the wrong value ("4-2=2"); either way its final answer is off.

Step labels (TRL stepwise supervision): a step is True iff its result is the true running
value, so the labels are True up to the first error and False from it on, and the first
False is the ProcessBench "first error". Chains where a wrong value meets the true one
again are redrawn, so the labels never turn True again and a wrong chain's final answer
is always wrong.

Why this error and not a miscalculation ("4+4=9"): a label has to be learnable at the
step's last token by a 2-4 layer model in a few CPU minutes. Checking "a op b = c" needs
an addition table, and tiny models trained on the step labels alone did not learn one in
1,500-4,000 steps (one- and two-digit variants, 2-3 layers, 64-128 wide were tried). A
dropped operation is seen by comparing two tokens of the step ("4+4=4": the result
repeats the first operand, which no right step does since every operand is at least 1).
The labels after the first error still need context: a chain that goes on computing
right has locally flawless steps that are False only because an earlier step was wrong.

Outcome rows are the same chains: response = the steps joined by "\n", label 1 iff the
final answer is right (iff the chain has no error).

Nothing else gives an error away: the chain's length and its first error's step are drawn
before its numbers (so the redraws cannot skew them), right and wrong solutions are drawn
from the same prompts (up to those redraws), every running value, right or wrong, is one
digit, and no eval prompt occurs in train.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIN_STEPS, MAX_STEPS = 3, 6
LOW, HIGH = 0, 9
"""Every running value, right or wrong, is one digit (one token)."""
MAX_OPERAND = 5
ERROR_SHARE = 0.5
STALL_SHARE = 0.5
"""Of the wrong chains, the share that keeps dropping operations after the first error;
the others compute every later step right from the wrong value."""
STEP_SEPARATOR = "\n"


def apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand


def make_solution(rng: random.Random) -> dict:
    """One chain: prompt, steps and step labels (True iff the step's result is the true running value)."""
    # The plan (length, first error, stall) is drawn once and only the numbers are redrawn,
    # so the redraws below cannot skew where errors fall.
    num_steps = rng.randint(MIN_STEPS, MAX_STEPS)
    first_error = rng.randrange(num_steps) if rng.random() < ERROR_SHARE else -1
    stall = rng.random() < STALL_SHARE
    while True:  # redraw until every value is one digit and a wrong chain never meets the true one again
        start = rng.randint(LOW, HIGH)
        ops = [(rng.choice("+-"), rng.randint(1, MAX_OPERAND)) for _ in range(num_steps)]
        steps, labels = [], []
        value = true_value = start
        for index, (op, operand) in enumerate(ops):
            true_value = apply(true_value, op, operand)
            dropped = index == first_error or (stall and 0 <= first_error < index)
            result = value if dropped else apply(value, op, operand)
            steps.append(f"{value}{op}{operand}={result}")
            labels.append(result == true_value)
            value = result
            if not (LOW <= true_value <= HIGH and LOW <= result <= HIGH):
                break
        else:
            if labels == [first_error == -1 or index < first_error for index in range(num_steps)]:
                prompt = "Compute " + str(start) + "".join(f"{op}{operand}" for op, operand in ops) + ".\n"
                return {"prompt": prompt, "completions": steps, "labels": labels}


def first_error(labels: list[bool]) -> int:
    """Index of the first False label, -1 when every step is right (ProcessBench's label)."""
    return next((index for index, label in enumerate(labels) if not label), -1)


def outcome_row(row: dict) -> dict:
    """The ORM view of a stepwise row: the same chain as one response, labelled by its final answer."""
    return {"prompt": row["prompt"], "response": STEP_SEPARATOR.join(row["completions"]),
            "label": int(row["labels"][-1])}


def generate(num_train: int, num_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Stepwise train and eval rows; prompts are unique within and across the two sets."""
    rng = random.Random(seed)
    seen: set[str] = set()
    sets = []
    for size in (num_train, num_eval):
        rows = []
        while len(rows) < size:
            row = make_solution(rng)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        sets.append(rows)
    return sets[0], sets[1]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=HERE / "data")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-eval", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held_out = generate(args.num_train, args.num_eval, args.seed)
    for split, rows in (("train", train), ("eval", held_out)):
        write(args.out_dir / f"steps_{split}.jsonl", rows)
        write(args.out_dir / f"outcome_{split}.jsonl", [outcome_row(row) for row in rows])
    print(f"wrote {len(train)} train and {len(held_out)} eval chains to {args.out_dir}")


if __name__ == "__main__":
    main()
