"""`tools/eval_rm.py` end to end, and its evaluation against the scorer's own rewards."""

from __future__ import annotations

import json

import pytest

from megatron_rm.errors import DataError
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.evaluation import evaluate_file
from megatron_rm.scoring.report import EvaluatedGroup, evaluate
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from tests.conftest import DEMO, PYTHON, REPO, run_command
from tests.convert.hf_models import save_model

SUBSETS = ("hep-go", "math-prm", "alpacaeval-easy", "xstest-should-refuse", "llmbar-natural")


@pytest.fixture(scope="module")
def data(tmp_path_factory, single_rank):
    root = tmp_path_factory.mktemp("eval")
    save_model("llama", root / "hf", seed=7)
    rows = [json.loads(line) for line in (DEMO / "data" / "eval.jsonl").read_text().splitlines()[:20]]
    rows = [{**row, "subset": SUBSETS[index % len(SUBSETS)]} for index, row in enumerate(rows)]
    rows.append({"prompt": "Rank these.", "responses": [" one", " two", " three"], "ranking": [2, 0, 1],
                 "subset": "hep-go"})
    rows.append({"prompt": "broken", "chosen": " only one side"})
    (root / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, rows


def test_the_report_is_made_of_the_scorers_rewards(data):
    root, rows = data
    scorer = Scorer(load_model(root / "hf"), ScoreSettings(max_tokens=64))
    report, counts = evaluate_file(str(root / "prefs.jsonl"), scorer, on_invalid="skip")
    assert counts == {"rows": 22, "evaluated": 21, "invalid": 1, "invalid_by_reason": {"missing_field": 1},
                      "dropped": {}}
    groups = []
    for row in rows[:21]:
        responses = ([row["chosen"], row["rejected"]] if "chosen" in row
                     else [row["responses"][index] for index in row["ranking"]])
        ids = [one.ids for one in scorer.encoder.texts([(row["prompt"], text) for text in responses])]
        groups.append(EvaluatedGroup(row["subset"], scorer.score(ids)[:, 0].tolist()))
    expected = evaluate(groups)
    for subset in SUBSETS:
        assert report.subsets[subset] == pytest.approx(expected.subsets[subset], rel=1e-5, abs=1e-7)
    assert report.overall == pytest.approx(expected.overall, rel=1e-5, abs=1e-7)
    assert report.overall["pairs"] == 20 + 3 and report.rewardbench is not None


def test_invalid_rows_stop_the_evaluation_by_default(data):
    root, _ = data
    with pytest.raises(DataError, match=r"(?s)prefs.jsonl:22: field 'rejected': missing.*--on-invalid skip"):
        evaluate_file(str(root / "prefs.jsonl"), Scorer(load_model(root / "hf")))


@pytest.mark.slow  # a child process
def test_the_tool_prints_the_table_and_writes_report_and_plot(data, tmp_path):
    root, _ = data
    result = run_command([PYTHON, str(REPO / "tools" / "eval_rm.py"), "--model", str(root / "hf"),
                          "--input", str(root / "prefs.jsonl"), "--on-invalid", "skip",
                          "--output", str(tmp_path / "report.json"), "--plot", str(tmp_path / "report.png")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RewardBench" in result.stdout and "21 of 22 rows evaluated" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["evaluated"] == 21 and set(report["subsets"]) == set(SUBSETS)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    failed = run_command([PYTHON, str(REPO / "tools" / "eval_rm.py"), "--model", str(root / "hf"),
                          "--input", str(root / "prefs.jsonl")])
    assert failed.returncode == 2 and "prefs.jsonl:22: field 'rejected': missing" in failed.stderr
