"""Reward functions named in a config: found (built-in, file or module), called as TRL calls them,
and every way a user's function can go wrong named in one line."""

from __future__ import annotations

import math

import pytest

from megatron_rm.errors import ConfigError, DataError
from megatron_rm.reward_functions.function import RewardFunction

# A reward function as TRL users write them: prompts, completions and the dataset's columns.
TRL_STYLE = '''
def length_bonus(prompts, completions, target, **kwargs):
    return [None if t is None else -abs(len(c) - t) for c, t in zip(completions, target)]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(TRL_STYLE)
    return path


def _call(function, completions, **columns):
    return function(["p"] * len(completions), completions, columns, [f"prompts.jsonl:{i + 1}"
                                                                     for i in range(len(completions))])


def test_a_function_from_a_file_gets_the_rows_columns(rewards_file):
    function = RewardFunction.load(f"{rewards_file}:length_bonus")
    assert function.name == f"{rewards_file}:length_bonus"
    assert _call(function, ["abc", "a", "zz"], target=[3, 2, None], unused=[0, 0, 0]) == [0.0, -1.0, None]


def test_a_function_from_a_module_and_a_built_in(tmp_path, monkeypatch):
    (tmp_path / "team_rewards.py").write_text(TRL_STYLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _call(RewardFunction.load("team_rewards:length_bonus"), ["ab"], target=[5]) == [-3.0]
    assert _call(RewardFunction.load("exact_match"), [" 42 ", "41"], ground_truth=["42", "42"]) == [1.0, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("{dir}/missing.py:fn", "reward.functions: the reward function file {dir}/missing.py does not exist"),
    ("{file}:nothing", "reward.functions: {file} has no function 'nothing'"),
    ("{file}:NOT_A_FUNCTION", "reward.functions: {file} has no function 'NOT_A_FUNCTION' (NOT_A_FUNCTION is a int)"),
    ("no_such_package.rewards:fn", "reward.functions: module no_such_package.rewards does not import: "
                                   "ModuleNotFoundError: No module named 'no_such_package'"),
    ("gsm9k", "reward.functions: 'gsm9k' must be a built-in (gsm8k, math, exact_match), FILE.py:NAME or "
              "package.module:NAME"),
    ("{file}:", "must be a built-in"),
])
def test_a_function_that_cannot_be_found_is_named(rewards_file, spec, message):
    fill = {"dir": rewards_file.parent, "file": rewards_file}
    with pytest.raises(ConfigError) as error:
        RewardFunction.load(spec.format(**fill))
    assert message.format(**fill) in str(error.value)


def test_a_file_that_does_not_import_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package_either\n")
    with pytest.raises(ConfigError, match=r"reward.functions: .*broken.py does not import: ModuleNotFoundError"):
        RewardFunction.load(f"{broken}:fn")


def _function(fn):
    return RewardFunction("my_reward", fn)


def test_a_function_that_raises_stops_naming_itself_and_the_first_row():
    def fails(prompts, completions, **columns):
        raise KeyError("answer")

    with pytest.raises(DataError, match=r"reward function my_reward raised KeyError: 'answer' \(on the rows from "
                                        r"prompts.jsonl:1\)"):
        _call(_function(fails), ["a", "b"])


@pytest.mark.parametrize("returned, message", [
    ([1.0], "returned 1 values for 2 completions"),
    (1.0, "returned a float for 2 completions"),
    ("10", "returned a str for 2 completions"),  # not a list of rewards, whatever its length
])
def test_the_wrong_number_of_rewards_is_refused(returned, message):
    with pytest.raises(DataError, match=message):
        _call(_function(lambda prompts, completions, **columns: returned), ["a", "b"])


@pytest.mark.parametrize("bad", ["1.0", True, math.nan, math.inf, [1.0]])
def test_a_reward_that_is_not_a_finite_number_names_its_row(bad):
    with pytest.raises(DataError, match=r"reward function my_reward returned .* for the row at prompts.jsonl:2: "
                                        "a reward is a finite number, or None for no reward"):
        _call(_function(lambda prompts, completions, **columns: [0.5, bad]), ["a", "b"])


def test_ints_and_numpy_numbers_are_rewards():
    numpy = pytest.importorskip("numpy")
    rewards = _call(_function(lambda prompts, completions, **columns: [1, numpy.float32(0.25), None]), ["a", "b", "c"])
    assert rewards == [1.0, 0.25, None] and all(type(r) is float for r in rewards[:2])
