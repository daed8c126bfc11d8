"""`tools/judge.py` at TP2 under torchrun (one launch) against one process and against plain
`transformers`, and `tools/eval_rm.py --judge` against the numbers of the judge's output file."""

from __future__ import annotations

import json

import pytest

from megatron_rm.judge import Judge
from megatron_rm.judge.batch_job import judge_file
from megatron_rm.loading.models import load_policy
from tests.conftest import PYTHON, REPO, run_command, torchrun
from tests.judge.models import LABELS, direct_report, pairs, read_rows, reference_verdicts, save_judges, write_rows

VERDICT = ("preference", "preference_as_a", "preference_as_b")


@pytest.mark.slow
def test_judge_at_tp2_and_eval_rm_judge(tmp_path, single_rank):
    folders = save_judges(tmp_path)
    rows = pairs(12)
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    result = torchrun(2, REPO / "tools" / "judge.py", "--model", str(folders["policy"]), "--tp", "2",
                      "--labels", ",".join(LABELS), "--input", str(path), "--output", str(tmp_path / "tp2.jsonl"))
    assert "labels: '1' as token" in result.stdout and "chat template" in result.stdout
    assert "judged 12 rows, 0 invalid" in result.stdout
    tp2 = read_rows(tmp_path / "tp2.jsonl")
    judge_file(Judge(load_policy(folders["policy"]), labels=LABELS), path, tmp_path / "one.jsonl", progress=False)
    expected = reference_verdicts(folders["hf"], rows)
    for row, one, reference in zip(tp2, read_rows(tmp_path / "one.jsonl"), expected):
        for name in VERDICT:
            assert abs(row[name] - one[name]) < 1e-5, name
            assert abs(row[name] - reference[name]) < 1e-4, name

    result = run_command([PYTHON, str(REPO / "tools" / "eval_rm.py"), "--judge", "--model", str(folders["hf"]),
                          "--labels", ",".join(LABELS), "--input", str(path), "--output", str(tmp_path / "r.json")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ties" in result.stdout.splitlines()[0] and "12 of 12 rows evaluated" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    for name in ("overall", "lists", "chat", "demo-a", "demo-b"):
        metrics = report["overall"] if name == "overall" else report["subsets"][name]
        expected = direct_report([row["preference"] for row in tp2 if name in ("overall", row["subset"])])
        assert {key: metrics[key] for key in ("pairs", "accuracy", "ties")} == \
            {key: expected[key] for key in ("pairs", "accuracy", "ties")}, name
        assert metrics["ece"] == pytest.approx(expected["ece"], abs=1e-5), name
