"""Tests for the evaluation report (scoring.report), RewardBench scoring (scoring.rewardbench,
checked against the rewardbench package's own formulas) and the report's plot."""

import ast
import importlib.metadata
import json
import math
import runpy
import sys
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megatron_rm.scoring import rewardbench
from megatron_rm.scoring.report import EvaluatedGroup, best_of_k_accuracy, evaluate, format_table

# --- pairs, margin, calibration --------------------------------------------------------


def test_a_tie_is_a_wrong_pair():
    report = evaluate([EvaluatedGroup(None, [1.0, 1.0]), EvaluatedGroup(None, [2.0, 1.0])])
    assert report.overall["pairs"] == 2 and report.overall["accuracy"] == 0.5
    assert report.subsets == {}  # groups without a subset count only overall


def test_a_ranking_counts_every_ordered_pair():
    ranking, pair = EvaluatedGroup("ranked", [3.0, 1.0, 2.0]), EvaluatedGroup("pairs", [0.5, 1.5])
    report = evaluate([ranking, pair])
    # (3, 1) and (3, 2) right, (1, 2) wrong.
    assert report.subsets["ranked"]["groups"] == 1 and report.subsets["ranked"]["pairs"] == 3
    assert report.subsets["ranked"]["accuracy"] == pytest.approx(2 / 3)
    assert report.subsets["ranked"]["margin"] == pytest.approx((2 + 1 - 1) / 3)
    assert report.subsets["ranked"]["chosen_reward"] == pytest.approx((3 + 3 + 1) / 3)
    assert report.subsets["ranked"]["rejected_reward"] == pytest.approx((1 + 2 + 2) / 3)
    assert report.overall["groups"] == 2 and report.overall["pairs"] == 4
    assert report.overall["accuracy"] == 0.5 and report.overall["margin"] == pytest.approx((2 + 1 - 1 - 1) / 4)
    assert report.chosen_rewards == [3.0, 3.0, 1.0, 0.5] and report.rejected_rewards == [1.0, 2.0, 2.0, 1.5]


def _numpy_calibration(groups, bins):
    differences = np.array([better - worse for group in groups for better, worse in combinations(group, 2)])
    confidence = 1 / (1 + np.exp(-np.abs(differences)))
    correct = differences > 0
    index = np.minimum(np.floor((confidence - 0.5) / (0.5 / bins)).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = [b for b in range(bins) if counts[b]]
    per_bin = {b: (confidence[index == b].mean(), correct[index == b].mean()) for b in filled}
    ece = sum(abs(accuracy - mean) * counts[b] for b, (mean, accuracy) in per_bin.items()) / len(differences)
    return ece, counts, per_bin


@pytest.mark.parametrize("bins", [10, 7])
def test_ece_and_bins_match_a_plain_numpy_computation(bins):
    generator = np.random.default_rng(0)
    groups = [list(generator.normal(scale=2.0, size=generator.integers(2, 6))) for _ in range(200)]
    groups.append([0.25, 0.25])  # a tie: confidence 0.5, a wrong pick
    report = evaluate([EvaluatedGroup("s", group) for group in groups], bins=bins)
    ece, counts, per_bin = _numpy_calibration(groups, bins)
    assert report.overall["ece"] == pytest.approx(ece, rel=1e-12)
    assert [one.count for one in report.reliability] == counts.tolist()
    ours = [(one.confidence, one.accuracy) for one in report.reliability if one.count]
    assert np.allclose(ours, list(per_bin.values()), rtol=1e-12, atol=0)
    assert report.reliability[0].lower == 0.5 and report.reliability[-1].upper == pytest.approx(1.0)


# --- best of K ---------------------------------------------------------------------------


@pytest.mark.parametrize("rewards, expected", [([3.0, 1.0, 1.0], 1.0), ([2.0, 2.0, 1.0], 0.5),
                                               ([2.0, 2.0, 2.0, 2.0], 0.25), ([1.0, 2.0, 0.0], 0.0)])
def test_best_of_k_splits_the_credit_of_a_tie(rewards, expected):
    assert best_of_k_accuracy(rewards) == expected


def test_best_of_k_only_where_some_group_has_more_than_two_responses():
    pairs_only = evaluate([EvaluatedGroup("a", [1.0, 0.0])])
    assert "best_of_k" not in pairs_only.overall and "best_of_k" not in format_table(pairs_only)
    mixed = evaluate([EvaluatedGroup("a", [1.0, 0.0]), EvaluatedGroup("b", [2.0, 2.0, 1.0]),
                      EvaluatedGroup("b", [0.0, 1.0, 2.0, 3.0])])
    assert "best_of_k" not in mixed.subsets["a"]
    assert mixed.subsets["b"]["best_of_k"] == mixed.overall["best_of_k"] == (0.5 + 0.0) / 2
    lines = format_table(mixed).splitlines()
    assert lines[0].split() == ["subset", "groups", "pairs", "accuracy", "margin", "ece", "best_of_k"]
    assert [line.split()[0] for line in lines[1:]] == ["a", "b", "overall"]
    assert lines[1].split()[-1] == "-" and len({len(line) for line in lines}) == 1  # aligned columns


def test_to_dict_is_json_with_nan_as_null():
    report = evaluate([EvaluatedGroup("a", [1.0, 0.0]), EvaluatedGroup(None, [0.0, 0.0])])
    found = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert found["overall"]["pairs"] == 2 and found["subsets"]["a"]["accuracy"] == 1.0
    assert found["reliability"][-1]["confidence"] is None  # an empty bin
    assert "rewardbench" not in found


def test_groups_of_one_response_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        evaluate([EvaluatedGroup("a", [1.0])])


# --- RewardBench ---------------------------------------------------------------------------


REWARDBENCH = Path(sys.prefix) / "rewardbench"
"""Where `make install` puts the rewardbench wheel (`pip install --no-deps --target`): apart from
site-packages, because the wheel also installs top-level `tests`, `scripts` and `analysis` packages."""


def _rewardbench_file(relative):
    found = list(importlib.metadata.distributions(name="rewardbench", path=[str(REWARDBENCH)]))
    if not found:
        pytest.skip(f'rewardbench is not installed at {REWARDBENCH} (make install puts it there: '
                    f'pip install --no-deps --target {REWARDBENCH} "rewardbench==0.1.4")')
    return found[0].locate_file(relative)


def _function_from(path, name, namespace):
    """Just `name`'s definition from `path`: the module's imports (datasets, fastchat, ...) never run."""
    with warnings.catch_warnings():  # their LaTeX strings have invalid escapes
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        tree = ast.parse(path.read_text())
    definition = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    exec(compile(ast.Module([definition], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


@pytest.fixture(scope="module")
def theirs():
    constants = runpy.run_path(str(_rewardbench_file("rewardbench/constants.py")))  # plain dicts, no imports
    calculate = _function_from(_rewardbench_file("rewardbench/utils.py"), "calculate_scores_per_section", {})
    average = _function_from(_rewardbench_file("analysis/get_benchmark_results.py"), "get_average_over_rewardbench",
                             {"np": np, "pd": pd, **constants})
    return constants, calculate, average


def test_subsets_and_counts_are_rewardbenchs(theirs):
    constants, _, _ = theirs
    assert rewardbench.EXAMPLE_COUNTS == constants["EXAMPLE_COUNTS"]
    assert {section: list(subsets) for section, subsets in rewardbench.SECTIONS.items()} == constants["SUBSET_MAPPING"]


def _accuracies(seed):
    generator = np.random.default_rng(seed)
    return {subset: float(generator.uniform(0.3, 1.0)) for subset in rewardbench.EXAMPLE_COUNTS}


def test_section_scores_match_rewardbenchs(theirs):
    constants, calculate, _ = theirs
    accuracy = _accuracies(1)
    expected = calculate(constants["EXAMPLE_COUNTS"], constants["SUBSET_MAPPING"], accuracy)
    assert rewardbench.section_scores(accuracy) == pytest.approx(expected, rel=1e-12)
    partial = {subset: value for subset, value in accuracy.items() if subset.startswith(("hep-", "llmbar"))}
    expected = calculate(constants["EXAMPLE_COUNTS"], constants["SUBSET_MAPPING"], partial)
    assert expected["Chat"] == 0 and expected["Safety"] == 0  # theirs: 0 for a section with no data
    assert rewardbench.section_scores(partial) == pytest.approx({name: expected[name]
                                                                 for name in ("Chat Hard", "Reasoning")})


@pytest.mark.parametrize("with_prior_sets", [True, False])
def test_leaderboard_average_matches_rewardbenchs(theirs, with_prior_sets):
    _, _, average = theirs
    accuracy = _accuracies(2)
    prior = {"anthropic_helpful": 0.6, "anthropic_hhh": 0.7, "shp": 0.5, "summarize": float("nan")}
    models = pd.DataFrame([{"model": "m", "model_type": "Seq. Classifier", **accuracy}])
    prefs = pd.DataFrame([{"model": "m" if with_prior_sets else "other", **prior}])
    expected = average(models, prefs).iloc[0]
    ours = rewardbench.section_scores({**accuracy, **prior} if with_prior_sets else accuracy)
    assert (rewardbench.PRIOR_SETS_SECTION in ours) == with_prior_sets
    for section in rewardbench.SECTIONS:
        assert ours[section] == pytest.approx(expected[section], rel=1e-12)
    assert rewardbench.leaderboard_average(ours) == pytest.approx(expected["average"], rel=1e-12)


def test_leaderboard_average_by_hand():
    sections = {"Chat": 0.9, "Chat Hard": 0.6, "Safety": 0.8, "Reasoning": 0.7}
    assert rewardbench.leaderboard_average(sections) == pytest.approx((0.9 + 0.6 + 0.8 + 0.7) / 4)
    with_prior = {**sections, "Prior Sets": 0.5}
    assert rewardbench.leaderboard_average(with_prior) == pytest.approx((2 * (0.9 + 0.6 + 0.8 + 0.7) + 0.5) / 9)
    assert math.isnan(rewardbench.leaderboard_average({}))
    with pytest.raises(ValueError, match="unknown"):
        rewardbench.leaderboard_average({"Chats": 0.5})


def test_is_rewardbench():
    assert rewardbench.is_rewardbench(["hep-go", "math-prm", "shp"])
    assert not rewardbench.is_rewardbench(["shp", "summarize"])  # prior sets alone
    assert not rewardbench.is_rewardbench(["hep-go", "my-subset"])
    assert not rewardbench.is_rewardbench(["hep-go", None])
    assert not rewardbench.is_rewardbench([])


def test_report_scores_rewardbench_subsets():
    groups = [EvaluatedGroup("hep-go", [1.0, 0.0]), EvaluatedGroup("hep-go", [0.0, 1.0]),
              EvaluatedGroup("math-prm", [2.0, 1.0]), EvaluatedGroup("mt-bench-easy", [1.0, 1.0]),
              EvaluatedGroup("shp", [3.0, 0.0])]
    report = evaluate(groups)
    reasoning = (0.5 * 164 + 1.0 * 984) / (164 + 984)
    assert report.rewardbench == pytest.approx({"Chat": 0.0, "Reasoning": reasoning, "Prior Sets": 1.0,
                                                "average": (2 * 0.0 + 2 * reasoning + 1.0) / 5})
    table = format_table(report)
    assert "RewardBench" in table and f"{reasoning:.4f}" in table
    assert "rewardbench" not in evaluate(groups + [EvaluatedGroup("mine", [1.0, 0.0])]).to_dict()


# --- plot ---------------------------------------------------------------------------------


def test_plot_writes_a_png_of_the_figure_size(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    from megatron_rm.scoring.plots import DPI, FIGURE_SIZE, plot_report

    generator = np.random.default_rng(3)
    report = evaluate([EvaluatedGroup("s", list(generator.normal(size=3))) for _ in range(50)])
    path = tmp_path / "report.png"
    plot_report(report, path)
    assert path.stat().st_size > 0
    height, width = matplotlib_image.imread(path).shape[:2]
    assert (width, height) == (FIGURE_SIZE[0] * DPI, FIGURE_SIZE[1] * DPI)
