"""The PRM/ORM example data: reproducible, labels that follow from the text, spread errors, held out, tokenizable."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.examples.scripts import load_script, read_jsonl

REPO = Path(__file__).resolve().parents[2]
PRM = REPO / "examples" / "prm"
DATA = PRM / "data"
TOKENIZER = PRM / "tokenizer"
NUM_TRAIN, NUM_EVAL = 4000, 500  # make_data.py's defaults
MAX_LENGTH = 64  # conf/train_rm.yaml: data.max_length; the chains fit without raising it
PROMPT = re.compile(r"Compute (\d)((?:[+-]\d)+)\.\n")
STEP = re.compile(r"(\d)([+-])(\d)=(\d)")


def _load_script(name: str):
    return load_script(PRM, name)


@pytest.fixture(scope="module")
def make_data():
    return _load_script("make_data")


@pytest.fixture(scope="module")
def steps(make_data):
    """The default data set (make_data.py's defaults), generated in-process."""
    train, held_out = make_data.generate(NUM_TRAIN, NUM_EVAL, seed=0)
    return {"train": train, "eval": held_out}


@pytest.fixture(scope="module")
def outcomes(make_data, steps):
    return {split: [make_data.outcome_row(row) for row in rows] for split, rows in steps.items()}


@pytest.fixture(scope="module")
def data_dir(make_data, steps, outcomes, tmp_path_factory):
    """The four files, as `python examples/prm/make_data.py --out-dir <this>` writes them."""
    out = tmp_path_factory.mktemp("prm_data")
    for split in ("train", "eval"):
        make_data.write(out / f"steps_{split}.jsonl", steps[split])
        make_data.write(out / f"outcome_{split}.jsonl", outcomes[split])
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def _all(rows: dict) -> list[dict]:
    return rows["train"] + rows["eval"]


def _parse(row: dict) -> tuple[int, list[tuple[str, int]], list[tuple[int, str, int, int]]]:
    """(start, the prompt's [(op, operand)], the steps' [(first operand, op, operand, result)])."""
    prompt = PROMPT.fullmatch(row["prompt"])
    assert prompt, row["prompt"]
    ops = [(op, int(operand)) for op, operand in re.findall(r"([+-])(\d)", prompt.group(2))]
    parsed = []
    for step in row["completions"]:
        match = STEP.fullmatch(step)
        assert match, step
        parsed.append((int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))))
    return int(prompt.group(1)), ops, parsed


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand


# --- 1. reproducible, and the shipped files are the generator's output ---------------------------

def test_generator_is_deterministic_for_a_seed(make_data):
    assert make_data.generate(300, 50, seed=7) == make_data.generate(300, 50, seed=7)
    assert make_data.generate(300, 50, seed=7) != make_data.generate(300, 50, seed=8)


def test_files_written_are_the_generated_rows(data_dir, steps, outcomes):
    for split in ("train", "eval"):
        assert read_jsonl(data_dir / f"steps_{split}.jsonl") == steps[split]
        assert read_jsonl(data_dir / f"outcome_{split}.jsonl") == outcomes[split]


def test_files_in_the_repository_if_any_are_the_generator_output(steps, outcomes):
    if not (DATA / "steps_train.jsonl").exists():
        pytest.skip("examples/prm/data/ is not written (make_data.py writes it)")
    for split in ("train", "eval"):
        assert read_jsonl(DATA / f"steps_{split}.jsonl") == steps[split]
        assert read_jsonl(DATA / f"outcome_{split}.jsonl") == outcomes[split]


# --- 2. the formats -------------------------------------------------------------------------------

def test_stepwise_rows_have_trl_format(make_data, steps):
    for row in _all(steps):
        assert set(row) == {"prompt", "completions", "labels"}
        assert isinstance(row["prompt"], str) and row["prompt"].endswith("\n")
        assert make_data.MIN_STEPS <= len(row["completions"]) == len(row["labels"]) <= make_data.MAX_STEPS
        assert all(isinstance(step, str) and "\n" not in step for step in row["completions"])
        assert all(isinstance(label, bool) for label in row["labels"])


def test_outcome_rows_are_the_same_chains(steps, outcomes):
    for split in ("train", "eval"):
        assert len(outcomes[split]) == len(steps[split])
        for outcome, row in zip(outcomes[split], steps[split]):
            assert set(outcome) == {"prompt", "response", "label"}
            assert outcome["prompt"] == row["prompt"]
            assert outcome["response"] == "\n".join(row["completions"])
            assert type(outcome["label"]) is int and outcome["label"] == int(all(row["labels"]))


# --- 3. every label follows from the text ---------------------------------------------------------

def test_step_labels_recomputed_from_the_text(steps):
    for row in _all(steps):
        start, ops, parsed = _parse(row)
        assert len(ops) == len(parsed)
        value = true_value = start
        for (first, op, operand, result), (asked_op, asked_operand), label in zip(parsed, ops, row["labels"]):
            # Each step applies the prompt's next operation to the previous step's result...
            assert (first, op, operand) == (value, asked_op, asked_operand), row
            true_value = _apply(true_value, asked_op, asked_operand)
            # ...and is right iff its result is the true running value.
            assert label == (result == true_value), row
            value = result


def test_labels_are_right_then_wrong_and_the_outcome_is_the_final_answer(make_data, steps):
    for row in _all(steps):
        labels = row["labels"]
        first = make_data.first_error(labels)
        assert labels == [first == -1 or index < first for index in range(len(labels))], row
        start, ops, parsed = _parse(row)
        true_final = start
        for op, operand in ops:
            true_final = _apply(true_final, op, operand)
        assert (parsed[-1][3] == true_final) == (first == -1), row


def test_errors_are_dropped_operations_then_stall_or_continue(make_data, steps):
    modes = Counter()
    for row in _all(steps):
        first = make_data.first_error(row["labels"])
        _, _, parsed = _parse(row)
        dropped = [result == value for value, _, _, result in parsed]
        computed = [result == _apply(value, op, operand) for value, op, operand, result in parsed]
        assert all(d != c for d, c in zip(dropped, computed)), row  # every step is one or the other
        if first == -1:
            assert not any(dropped), row
            continue
        assert not any(dropped[:first]) and dropped[first], row
        later = dropped[first + 1:]
        assert all(later) or not any(later), row
        if later:
            modes["stall" if all(later) else "continue"] += 1
    assert min(modes.values()) > 0.4 * sum(modes.values()), modes


# --- 4. balance, spread and held-out prompts -------------------------------------------------------

def test_about_half_the_chains_are_wrong(steps):
    for split, rows in steps.items():
        wrong = sum(not all(row["labels"]) for row in rows) / len(rows)
        assert 0.45 <= wrong <= 0.55, (split, wrong)


def test_first_errors_are_spread_over_the_steps(make_data, steps):
    """For each chain length n, each step index takes roughly 1/n of that length's first errors."""
    by_length = Counter()
    positions = Counter()
    for row in steps["train"]:
        first = make_data.first_error(row["labels"])
        if first >= 0:
            by_length[len(row["labels"])] += 1
            positions[len(row["labels"]), first] += 1
    assert set(by_length) == set(range(make_data.MIN_STEPS, make_data.MAX_STEPS + 1))
    for (length, first), count in positions.items():
        share = count / by_length[length]
        assert 0.6 / length <= share <= 1.4 / length, (length, first, share)
    # Every (length, position) pair occurs: 3 + 4 + ... + MAX_STEPS of them.
    assert len(positions) == sum(range(make_data.MIN_STEPS, make_data.MAX_STEPS + 1))


def test_eval_prompts_are_unique_and_not_in_train(steps):
    train = [row["prompt"] for row in steps["train"]]
    held_out = [row["prompt"] for row in steps["eval"]]
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)


# --- 5. the tokenizer -------------------------------------------------------------------------------

def test_tokenizer_is_fast_with_distinct_pad_eos_and_unk(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert None not in ids and len(set(ids)) == 3


def test_digits_operators_and_separator_are_single_tokens(tokenizer):
    for text in [*"0123456789", "+", "-", "=", "\n"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (text, ids)


def test_step_layout_matches_whole_text_and_ends_each_step_with_the_separator(tokenizer, steps):
    """TRL's layout (prompt ids, then each step + "\\n" encoded alone) gives the ids of the whole text, with no
    <unk>, and every step's last token is "\\n", so a step label sits on the same token either way."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    rows = _all(steps)
    texts = [row["prompt"] + "".join(step + "\n" for step in row["completions"]) for row in rows]
    prompts = tokenizer([row["prompt"] for row in rows], add_special_tokens=False)["input_ids"]
    step_ids = tokenizer([step + "\n" for row in rows for step in row["completions"]],
                         add_special_tokens=False)["input_ids"]
    wholes = tokenizer(texts, add_special_tokens=False)["input_ids"]
    next_step = 0
    for row, text, prompt, whole in zip(rows, texts, prompts, wholes):
        pieces = step_ids[next_step: next_step + len(row["completions"])]
        next_step += len(pieces)
        assert all(piece[-1:] == newline for piece in pieces), row
        assert prompt + [token for piece in pieces for token in piece] == whole, row
        assert tokenizer.unk_token_id not in whole and tokenizer.decode(whole) == text, row
    longest = max(len(whole) for whole in wholes) + 1  # + EOS
    assert longest <= MAX_LENGTH, longest


def test_rebuilt_tokenizer_has_the_shipped_vocabulary(tokenizer, data_dir, tmp_path):
    train_tokenizer = _load_script("train_tokenizer")
    train_tokenizer.build(data_dir, 64).save_pretrained(str(tmp_path))
    assert AutoTokenizer.from_pretrained(str(tmp_path)).get_vocab() == tokenizer.get_vocab()
