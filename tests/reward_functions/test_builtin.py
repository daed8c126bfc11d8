"""The built-in rewards on tables of completions and references with their expected scores, where the
reference comes from (ground_truth, GSM8K's answer, verl's reward_model), and TRL's calling convention."""

from __future__ import annotations

import pytest

from megatron_rm.reward_functions.builtin import BUILTINS, exact_match, gsm8k, math, normalise, references

GSM8K = [
    ("She pays 2 * 36 = 72.\n#### 72", "72", 1.0),
    ("#### 72", "73", 0.0),
    ("The answer is 72.", "72", 0.0),  # strict: no `####`
    ("So in total ... #### 1,234", "1234", 1.0),
    ("#### 1234", "1,234", 1.0),
    ("#### 1234.0", "1234", 1.0),
    ("#### 1234.5", "1234", 0.0),
    ("#### $5", "5", 1.0),
    ("#### $1,000.", "1000", 1.0),
    ("#### -3", "-3", 1.0),
    ("#### -3", "3", 0.0),
    ("#### -$3", "-3", 1.0),
    ("#### 72.", "72", 1.0),  # the trailing period is punctuation
    ("#### 5\nwait, no\n#### 6", "6", 1.0),  # the last `####` wins
    ("#### 5\nwait, no\n#### 6", "5", 0.0),
    ("####72", "72", 1.0),
    ("#### .5", "0.5", 1.0),
    ("#### seventy-two", "72", 0.0),
    ("#### 72" + "x" * 300, "72", 0.0),  # only the last 300 characters are read
    ("x" * 1000 + "#### 72", "72", 1.0),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("#### 24", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 0.0),  # the reference's last `####`, not 24
    ("#### 100", "$100", 1.0),
]

MATH = [
    (r"so the answer is $\boxed{\frac{1}{2}}$.", r"\frac12", 1.0),
    (r"\boxed{\sqrt{2}}", r"\sqrt{2}", 1.0),
    (r"\boxed{\sqrt{2}}", r"\sqrt{3}", 0.0),
    (r"\boxed{10\%}", "10", 1.0),
    (r"\boxed{\dfrac{3}{4}}", "3/4", 1.0),
    (r"\boxed{\tfrac34}", r"\frac{3}{4}", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 0.0),  # exact after normalisation: decimals stay decimals
    (r"\boxed{.5}", "0.5", 1.0),
    (r"\boxed{1} no, \boxed{2}", "2", 1.0),  # the last box wins
    (r"\boxed{1} no, \boxed{2}", "1", 0.0),
    ("the answer is 5", "5", 0.0),  # no box
    (r"\boxed{5", "5", 0.0),  # cut off inside the box
    (r"\boxed 5 is it", "5", 1.0),
    (r"\fbox{7}", "7", 1.0),
    (r"\boxed{x = 3}", "3", 1.0),
    (r"\boxed{90^\circ}", "90", 1.0),
    (r"\boxed{12 \text{ cm}}", "12", 1.0),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 1.0),
    (r"\boxed{-3/4}", r"-\frac{3}{4}", 1.0),
    (r"\boxed{\frac{\frac12}{3}}", r"\frac{\frac{1}{2}}{3}", 1.0),
    (r"\boxed{\$5.}", "5", 1.0),
    (r"\boxed{\{1, 2\}}", r"\{1,2\}", 1.0),
    (r"\boxed{4}", r"The solution ... so it is $\boxed{4}$.", 1.0),  # a boxed reference: its content
    (r"\boxed{4}", r"$\boxed{5}$", 0.0),
]

EXACT_MATCH = [
    ("Paris", "Paris", 1.0),
    ("  Paris\n", "Paris", 1.0),
    ("Paris", " Paris ", 1.0),
    ("paris", "Paris", 0.0),
    ("Paris.", "Paris", 0.0),
    ("The answer is Paris", "Paris", 0.0),
    ("", "", 1.0),
    ("", "Paris", 0.0),
    ("New  York", "New York", 0.0),  # only surrounding whitespace is stripped
    ("42", 42, 1.0),  # a number in the column is read as its text
    ("42.0", 42, 0.0),
    ("A", "A", 1.0),
    ("A", "B", 0.0),
    ("yes\n\n", "yes", 1.0),
    ("\tno", "no", 1.0),
    ("no", "yes", 0.0),
    ("x = 1", "x=1", 0.0),
    ("ünïcode", "ünïcode", 1.0),
    ("line one\nline two", "line one\nline two", 1.0),
    ("line one\nline two", "line one", 0.0),
]


def score(fn, completion: str, reference) -> float | None:
    [reward] = fn(prompts=["a prompt"], completions=[completion], ground_truth=[reference])
    return reward


@pytest.mark.parametrize(("completion", "reference", "expected"), GSM8K)
def test_gsm8k(completion, reference, expected):
    assert score(gsm8k, completion, reference) == expected


@pytest.mark.parametrize(("completion", "reference", "expected"), MATH)
def test_math(completion, reference, expected):
    assert score(math, completion, reference) == expected


@pytest.mark.parametrize(("completion", "reference", "expected"), EXACT_MATCH)
def test_exact_match(completion, reference, expected):
    assert score(exact_match, completion, reference) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    (r"\frac12", r"\frac{1}{2}"),
    (r"\frac1b", r"\frac{1}{b}"),
    (r"\frac\pi2", r"\frac{\pi}{2}"),
    (r"\sqrt2", r"\sqrt{2}"),
    (r"\sqrt[3]x", r"\sqrt[3]{x}"),
    (r"\text{Monday}", r"\text{Monday}"),  # a lone \text is the answer, not a unit
    (r"x=y=5", r"x=y=5"),  # an equation, not an assignment
    (r"a \rightarrow b", r"a\rightarrowb"),  # \right is removed, \rightarrow is not
    (r"1\,000", "1000"),
])
def test_normalise(answer, expected):
    assert normalise(answer) == expected


def test_the_three_reference_columns():
    completions = ["#### 72", "#### 72", "#### 72"]
    assert gsm8k(None, completions, ground_truth=["72", "73", None]) == [1.0, 0.0, None]
    assert gsm8k(None, completions, answer=["So 72.\n#### 72", "#### 7", "72"]) == [1.0, 0.0, 1.0]
    reward_model = [{"ground_truth": "72", "style": "rule"}, {"style": "rule"}, None]
    assert gsm8k(None, completions, reward_model=reward_model) == [1.0, None, None]


def test_the_columns_are_read_in_order():
    columns = {"reward_model": [{"ground_truth": "3"}], "answer": ["2"], "ground_truth": ["1"]}
    assert references(columns, 1) == ["1"]
    del columns["ground_truth"]
    assert references(columns, 1) == ["2"]
    del columns["answer"]
    assert references(columns, 1) == ["3"]


def test_no_reference_column_names_the_columns_looked_for():
    with pytest.raises(ValueError, match="ground_truth, answer and reward_model"):
        exact_match(prompts=["p"], completions=["c"], question=["q"])


def test_a_reference_column_of_another_length_is_refused():
    with pytest.raises(ValueError, match="the answer column holds 1 values for 2 completions"):
        references({"answer": ["1"]}, 2)


def test_a_reward_model_value_that_is_not_a_dict_is_refused():
    with pytest.raises(ValueError, match="a reward_model value is a str"):
        references({"reward_model": ["72"]}, 1)


def test_trl_calling_convention_ignores_other_columns():
    rewards = BUILTINS["math"](
        prompts=["What is 1/2?", "What is 1/2?", "What is 2+2?"],
        completions=[r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", "4"],
        ground_truth=["1/2", "1/2", "4"],
        level=["Level 1", "Level 1", "Level 2"],
        completion_ids=[[1], [2], [3]],
        trainer_state=object(),
    )
    assert rewards == [1.0, 0.0, 0.0]


def test_builtins_are_the_three_functions():
    assert BUILTINS == {"gsm8k": gsm8k, "math": math, "exact_match": exact_match}
