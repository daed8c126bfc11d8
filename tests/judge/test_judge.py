"""The judge in process on a real tiny policy: its verdicts equal a judge written with plain
`transformers` on the exported model, averaging both orders makes a label-biased judge
symmetric, eval_rm's judge report is the judge file's numbers, and bad rows, labels and
templates are refused with messages naming them."""

from __future__ import annotations

import copy

import pytest

from megatron_rm.errors import ConfigError, DataError
from megatron_rm.judge import Judge, JudgePrompt
from megatron_rm.judge.batch_job import judge_file
from megatron_rm.judge.evaluation import evaluate_judge_file, log_odds
from megatron_rm.judge.pairs import Pair
from megatron_rm.judge.prompt import check_template, read_template
from megatron_rm.loading.models import load_policy
from megatron_rm.scoring.report import format_table
from tests.judge.models import (
    LABELS,
    ROWS,
    direct_report,
    pairs,
    read_rows,
    reference_verdicts,
    save_judges,
    write_rows,
)

VERDICT = ("preference", "preference_as_a", "preference_as_b")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, single_rank):
    return save_judges(tmp_path_factory.mktemp("judges"))


@pytest.fixture(scope="module")
def judge(folders):
    return Judge(load_policy(folders["policy"]), labels=LABELS)


def judged(judge: Judge, rows: list[dict], folder, **options) -> list[dict]:
    (folder / "out.jsonl").unlink(missing_ok=True)  # a new run, not a resumed one
    judge_file(judge, write_rows(folder / "in.jsonl", rows), folder / "out.jsonl", progress=False, **options)
    return read_rows(folder / "out.jsonl")


@pytest.mark.parametrize("source", ["policy", "plain"])
def test_verdicts_equal_a_transformers_judge(folders, judge, source, tmp_path):
    """The checkpoint with a chat template against its export; the export without one against itself."""
    ours = judge if source == "policy" else Judge(load_policy(folders["plain"]), labels=LABELS)
    assert ours.prompt.chat is (source == "policy")
    assert ours.prompt.written == LABELS  # plain text ends in "Answer:", where " 1" is two tokens: "1" is read
    rows = pairs(12)
    found = judged(ours, rows, tmp_path)
    expected = reference_verdicts(folders["hf" if source == "policy" else "plain"], rows)
    for row, written, reference in zip(rows, found, expected):
        assert row.items() <= written.items()
        for name in VERDICT:
            assert abs(written[name] - reference[name]) < 1e-4, (name, written, reference)
        assert written["label_mass"] == pytest.approx(reference["label_mass"], rel=1e-4)
    # Not a constant judge: the verdicts differ from 0.5 and from one another.
    assert max(abs(row["preference_as_a"] - 0.5) for row in found) > 0.1
    assert len({round(row["preference"], 4) for row in found}) == len(found)
    assert found[3]["preference"] == pytest.approx(0.5, abs=1e-6)  # the same answer twice


def test_batching_changes_no_verdict(judge, tmp_path):
    rows = pairs(8)
    alone = judged(judge, rows, tmp_path)
    for batching in ("bucket", "pack"):
        other = Judge(judge.policy, labels=LABELS, batching=batching, max_tokens=1500)
        for row, reference in zip(judged(other, rows, tmp_path, chunk_rows=3), alone):
            for name in VERDICT:
                assert abs(row[name] - reference[name]) < 1e-5, (batching, name)


def test_both_orders_make_a_label_biased_judge_symmetric(judge, tmp_path):
    rows = pairs(10)
    found = judged(judge, rows, tmp_path)
    # The judge is biased: shown in the other order, it often changes its mind.
    assert max(abs(row["preference_as_a"] - row["preference_as_b"]) for row in found) > 0.3
    swapped = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} if "chosen" in row else
               {**row, "response_a": row["response_b"], "response_b": row["response_a"]} for row in rows]
    for row, mirror in zip(found, judged(judge, swapped, tmp_path)):
        assert abs(mirror["preference"] - (1 - row["preference"])) < 1e-6
        assert abs(mirror["preference_as_a"] - (1 - row["preference_as_b"])) < 1e-6
        assert abs(mirror["preference_as_b"] - (1 - row["preference_as_a"])) < 1e-6


def test_the_eval_report_is_the_judge_files_numbers(judge, tmp_path):
    rows = pairs(16)
    found = judged(judge, rows, tmp_path)
    report, counts = evaluate_judge_file(str(tmp_path / "in.jsonl"), judge)
    assert counts == {"rows": 16, "evaluated": 16, "invalid": 0, "invalid_by_reason": {}, "dropped": {}}
    subsets = {row["subset"] for row in rows}
    assert set(report.subsets) == subsets
    for name, metrics in [*report.subsets.items(), ("overall", report.overall)]:
        preferences = [out["preference"] for row, out in zip(rows, found) if name in ("overall", row["subset"])]
        expected = direct_report(preferences)
        assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-9), name
        assert metrics["margin"] == pytest.approx(sum(map(log_odds, preferences)) / len(preferences), abs=1e-9)
    assert 0 < report.overall["accuracy"] < 1 and report.overall["ece"] > 0
    assert "ties" in format_table(report).splitlines()[0]


def test_a_judge_that_cannot_tell_ties_every_pair(folders, tmp_path):
    blind = Judge(load_policy(folders["blind"]), labels=LABELS)
    rows = pairs(6)
    assert {row["preference"] for row in judged(blind, rows, tmp_path)} == {0.5}  # exactly
    report, _ = evaluate_judge_file(str(tmp_path / "in.jsonl"), blind)
    assert report.overall["ties"] == 6 and report.overall["accuracy"] == 0.0  # a tie is not right
    assert report.overall["ece"] == 0.5 and report.overall["margin"] == 0.0


def test_bad_rows_name_file_line_and_field(judge, tmp_path):
    rows = [ROWS[0],
            {"prompt": "Name a fruit.", "chosen": "apple"},
            {"prompt": "Name a fruit.", "chosen": ["apple"], "rejected": "car"},
            {"prompt": "Name a fruit.", "response_a": "apple", "response_b": "  "},
            {"prompt": "Name a fruit.", "chosen": "apple", "rejected": "car", "response_a": "pear"},
            {"prompt": "Rank these.", "responses": ["a", "b"], "ranking": [0, 1]},
            {"chosen": "apple", "rejected": "car"},
            "not an object"]
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"(?s)bad.jsonl:2: field 'rejected': missing.*"
                                        r"bad.jsonl:3: field 'chosen': expected a string, got a list.*"
                                        r"bad.jsonl:4: field 'response_b': empty response.*--on-invalid skip"):
        judge_file(judge, path, tmp_path / "stopped.jsonl", progress=False)
    summary = judge_file(judge, path, tmp_path / "out.jsonl", on_invalid="skip", progress=False)
    assert summary.done == 1 and summary.problems.counts == {
        "missing_field": 2, "wrong_type": 2, "empty_response": 1, "mixed_shapes": 1, "not_an_object": 1}
    out = read_rows(tmp_path / "out.jsonl")
    assert "preference" in out[0] and all("preference" not in row for row in out[1:])
    assert out[5]["error"].endswith("field 'responses': a judge compares two answers: give them as 'chosen' and "
                                    "'rejected', or 'response_a' and 'response_b'")
    assert out[6]["error"].endswith("field 'prompt': missing")
    # eval_rm counts the same problems, and stops on them unless told to skip.
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'rejected': missing"):
        evaluate_judge_file(str(path), judge)
    _, counts = evaluate_judge_file(str(path), judge, on_invalid="skip")
    assert counts["evaluated"] == 1 and counts["invalid"] == 7


def test_over_long_rows_are_refused_or_left_out(judge, tmp_path):
    short = Judge(judge.policy, labels=LABELS, max_length=560)
    rows = [ROWS[0], {**ROWS[0], "chosen": "1. red " * 30}]
    path = write_rows(tmp_path / "long.jsonl", rows)
    with pytest.raises(DataError, match=r"long.jsonl:2: its judging prompt is \d+ tokens, over max_length=560"):
        judge_file(short, path, tmp_path / "out.jsonl", progress=False)
    _, counts = evaluate_judge_file(str(path), short)
    assert counts["evaluated"] == 1 and counts["dropped"] == {"too_long": 1}


def test_labels_must_each_be_one_known_token(judge):
    tokenizer = judge.policy.tokenizer
    with pytest.raises(ConfigError, match=r"label '12' is not a single token of the tokenizer .*tokenizer.*: "
                                          r"'12' is \['1', '2'\]\. Choose labels"):
        JudgePrompt(tokenizer, labels=("12", "2"))
    with pytest.raises(ConfigError, match=r"label 'A' is not a single token .*: 'A' merges with the text before it"):
        JudgePrompt(tokenizer)  # the default A,B: the demo vocabulary writes "\nA" as one token
    with pytest.raises(ConfigError, match=r"label 'B' is not a single token .*: 'B' is \['<unk>'\]"):
        JudgePrompt(tokenizer, labels=("1", "B"))  # and has no "B"
    with pytest.raises(ConfigError, match="expected two different labels"):
        JudgePrompt(tokenizer, labels=("1", "1"))
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None  # plain text ends in "Answer:": " 1" is tried first, then "1"
    with pytest.raises(ConfigError, match=r"label 'x1' .*after the judging prompt's end '.*Answer:': "
                                          r"' x1' is \['▁', 'x', '1'\]; 'x1' is \['x', '1'\]"):
        JudgePrompt(plain, labels=("x1", "2"))


def test_templates_are_checked(judge, tmp_path):
    with pytest.raises(ConfigError, match=r"the judge template: unknown field \{answer\}; no \{answer_b\}"):
        check_template("{question} {answer_a} {answer}")
    with pytest.raises(ConfigError, match="a literal brace is written"):
        check_template("{question} {answer_a} {answer_b} {")
    with pytest.raises(ConfigError, match="no such template file"):
        read_template(tmp_path / "missing.txt")
    (tmp_path / "t.txt").write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\n{{brace}} Better, {label_a} "
                                    "or {label_b}?")
    custom = Judge(judge.policy, template=read_template(tmp_path / "t.txt"), labels=LABELS)
    first, second = custom.prompt.prompts(Pair("Hi?", "yes", "no"))
    assert first[0]["content"] == "Q: Hi?\nA: yes\nB: no\n{brace} Better, 1 or 2?"
    assert second[0]["content"] == "Q: Hi?\nA: no\nB: yes\n{brace} Better, 1 or 2?"
