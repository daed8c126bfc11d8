"""run_tool, the body every file tool (score_rm, judge, generate) ends with."""

from __future__ import annotations

import pytest

from megatron_rm.core import file_job
from megatron_rm.core.file_job import Summary, run_tool
from megatron_rm.errors import UsageError


@pytest.fixture(autouse=True)
def shutdowns(monkeypatch):
    """Counts the process-group shutdowns instead of tearing down the one the other in-process
    tests share."""
    calls = []
    monkeypatch.setattr(file_job.parallel, "shutdown", lambda: calls.append(1))
    return calls


def test_a_finished_run_is_returned_with_what_came_with_it(shutdowns):
    summary = Summary(verb="scored", done=3)
    assert run_tool(lambda: summary, "out.jsonl", "score") is summary
    assert run_tool(lambda: (summary, "task"), "out.jsonl", "generate") == (summary, "task")
    assert len(shutdowns) == 2


def test_a_rank_without_a_summary_has_nothing_to_report():
    assert run_tool(lambda: None, "out.jsonl", "score") is None
    assert run_tool(lambda: (None, "task"), "out.jsonl", "generate") is None


def test_a_rerun_on_a_complete_output_says_there_is_nothing_to_do(capsys):
    assert run_tool(lambda: Summary(skipped=7, complete=True), "out.jsonl", "judge") is None
    assert capsys.readouterr().out == "out.jsonl is already complete (7 rows): nothing to judge\n"


def test_a_usage_error_exits_with_status_2_and_its_message(capsys, monkeypatch, shutdowns):
    monkeypatch.setenv("RANK", "0")

    def run():
        raise UsageError("--input missing.jsonl: no such file")

    with pytest.raises(SystemExit) as stopped:
        run_tool(run, "out.jsonl", "score")
    assert stopped.value.code == 2 and shutdowns == [1]  # shut down however it ends
    assert capsys.readouterr().err == "error: --input missing.jsonl: no such file\n"
