"""A run's reward from functions and a reward model: what a function is given (TRL's calling
convention), weighted sums and per-source standardisation against plain formulas, missing
rewards, and a failing function named with its row."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rm.data import document_batch
from megatron_rm.errors import DataError
from megatron_rm.ppo.reward_sources import RewardSources, response_rows
from megatron_rm.reward_functions.function import RewardFunction

ROWS = [{"prompt": "Name 2 fruits.", "ground_truth": "2"}, {"prompt": "Name 3 birds.", "ground_truth": "3"}]


def _functions(tmp_path, source: str) -> list[RewardFunction]:
    path = tmp_path / "rewards.py"
    path.write_text(source)
    return [RewardFunction.load(f"{path}:{name}") for name in ("first", "second")]


SOURCE = """
seen = {}

def first(prompts, completions, ground_truth, **columns):
    seen.update(prompts=prompts, completions=completions, ground_truth=ground_truth, columns=columns)
    return [float(len(c)) for c in completions]

def second(prompts, completions, **columns):
    return [None if c == "none" else (1.0 if c.endswith("!") else 0.0) for c in completions]
"""


def _rows(texts):
    return response_rows([ROWS[i % 2] for i in range(len(texts))], [f"p.jsonl:{1 + i % 2}" for i in range(len(texts))],
                         texts)


def _batches(sizes):
    return [document_batch([[1, 2, 3]] * size, 0, prompt_lengths=[1] * size) for size in sizes]


TEXTS = ["ab!", "abcd", "none", "a!"]


def test_functions_get_trls_arguments_and_mix_by_weight(tmp_path, single_rank):
    first, second = _functions(tmp_path, SOURCE)
    sources = RewardSources(None, [first, second], [1.0, 0.5], "sum", single_rank)
    rewards = sources(_batches([3, 1]), lambda: pytest.fail("no reward model"), lambda: _rows(TEXTS))
    seen = first.fn.__globals__["seen"]
    assert seen["prompts"] == ["Name 2 fruits.", "Name 3 birds."] * 2 and seen["completions"] == TEXTS
    assert seen["ground_truth"] == ["2", "3", "2", "3"] and seen["columns"] == {}
    # TRL: the weighted nansum over the functions; "none" has no second reward.
    expected = [3 + 0.5, 4 + 0.0, 4.0, 2 + 0.5]
    assert torch.cat(rewards.combined).tolist() == expected and [len(r) for r in rewards.combined] == [3, 1]
    assert math.isnan(float(torch.cat(rewards.sources[second.name])[2]))


def test_normalize_then_sum_standardises_each_source_over_the_step(tmp_path, single_rank):
    first, second = _functions(tmp_path, SOURCE)
    sources = RewardSources(None, [first, second], [1.0, 0.5], "normalize_then_sum", single_rank)
    rewards = sources(_batches([4]), None, lambda: _rows(TEXTS))
    lengths, bangs = torch.tensor([3.0, 4.0, 4.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])

    def z(x):
        return (x - x.mean()) / x.std(unbiased=False)
    zb = z(bangs)
    expected = z(lengths) + 0.5 * torch.tensor([zb[0], zb[1], 0.0, zb[2]])
    assert torch.cat(rewards.combined).tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_a_response_without_any_reward_stays_without_one(tmp_path, single_rank):
    (second,) = _functions(tmp_path, SOURCE)[1:]
    rewards = RewardSources(None, [second], [2.0], "sum", single_rank)(_batches([2]), None,
                                                                       lambda: _rows(["x!", "none"]))
    assert rewards.combined[0][0] == 2.0 and math.isnan(float(rewards.combined[0][1]))


def test_messages_prompts_get_messages_completions(single_rank):
    rows = response_rows([{"messages": [{"role": "user", "content": "hi"}], "answer": 4}], ["m.jsonl:7"], ["4"])
    assert rows.prompts == [[{"role": "user", "content": "hi"}]]
    assert rows.completions == [[{"role": "assistant", "content": "4"}]]
    assert rows.columns == {"messages": [[{"role": "user", "content": "hi"}]], "answer": [4]}


def test_a_failing_function_stops_naming_itself_and_the_row(tmp_path, single_rank):
    (bad,) = _functions(tmp_path, SOURCE.replace("float(len(c))", "1 / 0"))[:1]
    with pytest.raises(DataError, match=r"reward function .*rewards.py:first raised ZeroDivisionError.*p.jsonl:1"):
        RewardSources(None, [bad], None, "sum", single_rank)(_batches([2]), None, lambda: _rows(TEXTS[:2]))


def test_a_column_a_function_needs_is_checked_against_every_row(tmp_path):
    first, second = _functions(tmp_path, SOURCE)
    rows = [{"prompt": "a", "ground_truth": "1"}, {"prompt": "b"}]
    assert first.column_problem(rows, ["p.jsonl:1", "p.jsonl:2"]) == (
        f"p.jsonl:2: the prompt row has no ground_truth column, which reward function {first.name} needs")
    assert second.column_problem(rows, ["p.jsonl:1", "p.jsonl:2"]) is None
    gsm8k = RewardFunction.load("gsm8k")
    assert "p.jsonl:1: reward function gsm8k needs a reference answer" in gsm8k.column_problem([{"prompt": "a"}],
                                                                                                ["p.jsonl:1"])
