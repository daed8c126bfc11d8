"""Tests for validating one raw row (pair, ranking or single response) into a Comparison (megatron_rm.data.rows)."""

import json
import math
import pickle

import pytest

from megatron_rm.data.records import Comparison
from megatron_rm.data.rows import REASONS, ProblemLog, RowKeys, RowProblem, parse_row
from megatron_rm.data.sources import RawRow

WHERE = "train.jsonl:7"


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


DEFAULT_KEYS = RowKeys()


def parse(row, keys=DEFAULT_KEYS):
    """A row as it comes from a JSON Lines file (bytes) unless it is already bytes or not a dict."""
    payload = json.dumps(row).encode() if isinstance(row, dict) else row
    return parse_row(RawRow(WHERE, payload), keys)


def test_string_pair_with_margin():
    assert parse({"prompt": "Q", "chosen": "yes", "rejected": "no", "margin": 2}) == \
        Comparison("Q", ("yes", "no"), WHERE, margin=2.0)


def test_prompt_is_optional_for_string_pairs():
    comparison = parse({"chosen": "yes", "rejected": "no", "margin": None, "labels": None})
    assert comparison == Comparison("", ("yes", "no"), WHERE)


def test_conversation_with_separate_prompt_keeps_only_role_and_content():
    row = {"prompt": [{"role": "system", "content": "be brief"}, user("hi")],
           "chosen": [{"role": "assistant", "content": "hello", "name": "bot", "tool_calls": []}],
           "rejected": [bot("go away")]}
    assert parse(row) == Comparison(({"role": "system", "content": "be brief"}, user("hi")),
                                    ((bot("hello"),), (bot("go away"),)), WHERE)


def test_content_part_lists_are_their_text_parts_joined_by_newlines_as_vllm_joins_them():
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    row = {"prompt": [{"role": "user", "content": parts}], "chosen": [bot("a")], "rejected": [bot("b")]}
    assert parse(row).prompt == (user("first\nsecond"),)


def test_conversation_without_prompt_moves_the_shared_turns_into_the_prompt():
    shared = [user("hi"), bot("hello"), user("tell me a joke")]
    row = {"chosen": shared + [bot("a good joke")], "rejected": shared + [bot("no"), user("why"), bot("because")]}
    comparison = parse(row)
    assert comparison.prompt == tuple(shared)
    assert comparison.responses == ((bot("a good joke"),), (bot("no"), user("why"), bot("because")))
    assert comparison.conversational


def test_string_prompt_with_message_responses_becomes_a_user_message():
    comparison = parse({"prompt": "hi", "chosen": [bot("hello")], "rejected": [bot("bye")]})
    assert comparison.prompt == (user("hi"),)
    assert comparison.responses == ((bot("hello"),), (bot("bye"),))


def test_ranked_responses_are_reordered_best_first_with_their_labels():
    row = {"prompt": "Q", "responses": ["ok", "worst", "best"], "ranking": [2, 0, 1],
           "labels": [[1, 0.5], [None, 0], [3, 2]]}
    comparison = parse(row)
    assert comparison.responses == ("best", "ok", "worst")
    assert comparison.labels[:2] == ((3.0, 2.0), (1.0, 0.5))
    assert math.isnan(comparison.labels[2][0]) and comparison.labels[2][1] == 0.0
    assert comparison.margin is None


def test_ranked_conversations_share_a_prompt_across_all_responses():
    row = {"responses": [[user("hi"), bot(text)] for text in ("a", "b", "c")], "ranking": [1, 2, 0]}
    comparison = parse(row)
    assert comparison.prompt == (user("hi"),)
    assert comparison.responses == ((bot("b"),), (bot("c"),), (bot("a"),))


def test_pair_labels_follow_chosen_then_rejected():
    assert parse({"chosen": "a", "rejected": "b", "labels": [[1], [None]]}).labels[0] == (1.0,)


def test_pair_shape_wins_when_a_row_has_both_shapes():
    row = {"chosen": "a", "rejected": "b", "responses": ["x", "y"], "ranking": [1, 0]}
    assert parse(row).responses == ("a", "b")


def test_null_keys_count_as_absent_as_in_parquet_files_mixing_both_shapes():
    row = {"chosen": None, "rejected": None, "margin": None, "responses": ["x", "y"], "ranking": [1, 0]}
    assert parse(row).responses == ("y", "x")


def test_configured_keys_are_read_and_named_in_problems():
    keys = RowKeys(prompt="question", chosen="good", rejected="bad")
    assert parse({"question": "Q", "good": "yes", "bad": "no"}, keys) == Comparison("Q", ("yes", "no"), WHERE)
    problem = parse({"question": "Q", "good": "yes", "bad": 3}, keys)
    assert (problem.reason, problem.field) == ("wrong_type", "bad")


def test_dict_payloads_from_other_formats_are_parsed_alike():
    assert parse_row(RawRow("d.parquet:row 3", {"chosen": "a", "rejected": "b"}), RowKeys()).source == \
        "d.parquet:row 3"


def test_single_response_with_a_list_of_labels():
    comparison = parse({"prompt": "Q", "response": "yes", "labels": [0.7, None]})
    assert (comparison.prompt, comparison.responses, comparison.margin) == ("Q", ("yes",), None)
    assert comparison.labels[0][0] == 0.7 and math.isnan(comparison.labels[0][1]) and len(comparison.labels) == 1


def test_single_response_with_one_number_as_its_label_and_no_labels_at_all():
    assert parse({"prompt": "Q", "response": "yes", "labels": 3}).labels == ((3.0,),)
    assert parse({"response": "yes", "chosen": None, "responses": None}) == Comparison("", ("yes",), WHERE)


def test_single_conversation_without_prompt_ends_in_its_response():
    row = {"response": [user("hi"), bot("hello"), user("a joke?"), bot("no")], "labels": [1]}
    comparison = parse(row)
    assert comparison.prompt == (user("hi"), bot("hello"), user("a joke?"))
    assert comparison.responses == ((bot("no"),),) and comparison.labels == ((1.0,),)


def test_single_conversation_with_a_string_prompt():
    assert parse({"prompt": "hi", "response": [bot("hello")]}) == Comparison((user("hi"),), ((bot("hello"),),), WHERE)


def test_single_response_key_is_configurable():
    keys = RowKeys(response="answer", labels="scores")
    assert parse({"prompt": "Q", "answer": "yes", "scores": [2]}, keys).responses == ("yes",)
    problem = parse({"prompt": "Q", "answer": "yes", "chosen": "no"}, keys)
    assert (problem.reason, problem.field) == ("mixed_shapes", "chosen") and "'answer'" in problem.message


PAIR = {"prompt": "Q", "chosen": "yes", "rejected": "no"}
RANKED = {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]}
SINGLE = {"prompt": "Q", "response": "yes"}
PROBLEMS = [
    (b'{"chosen": "\xff"}', "invalid_json", None, "byte 13"),
    (b'{"chosen": "a", }', "invalid_json", None, "column 17"),
    (b'["a", "b"]', "not_an_object", None, "got a list"),
    (b'{"prompt": "Q", "chosen": "a \\ud800", "rejected": "b"}', "bad_text", "chosen", "lone surrogate"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\udfff"}]}, "bad_text",
     "messages[1].content", "lone surrogate '\\udfff' at character 0"),
    ("just text", "not_an_object", None, "got a string"),
    ({"prompt": "Q", "rejected": "no"}, "missing_field", "chosen", "missing"),
    ({"prompt": "Q", "chosen": "yes"}, "missing_field", "rejected", "missing"),
    ({**PAIR, "rejected": None}, "missing_field", "rejected", "null"),
    ({**PAIR, "chosen": 5}, "wrong_type", "chosen", "a string or a list of messages, got a number"),
    ({**PAIR, "prompt": [user("hi")]}, "wrong_type", "prompt", "got a list"),
    ({**PAIR, "prompt": 1}, "wrong_type", "prompt", "got a number"),
    ({**PAIR, "rejected": [bot("no")]}, "wrong_type", "rejected", "expected a string like 'chosen'"),
    ({"responses": "a"}, "wrong_type", "responses", "at least 2 responses, got a string"),
    ({"responses": ["a"], "ranking": [0]}, "wrong_type", "responses", "got 1 response"),
    ({**PAIR, "chosen": " \n"}, "empty_response", "chosen", "empty"),
    ({**RANKED, "responses": ["a", "", "c"]}, "empty_response", "responses[1]", "empty"),
    ({"chosen": [user("q"), bot(" ")], "rejected": [user("q"), bot("x")]},
     "empty_response", "chosen[1].content", "final message"),
    ({"chosen": [user("q")], "rejected": [user("q"), bot("x")]}, "empty_response", "chosen", "none is left"),
    ({"chosen": [user("q"), bot("x")], "rejected": [{"role": "user", "content": [{"type": "image_url"}]}, bot("y")]},
     "bad_messages", "rejected[0].content[0]", "expected a text part"),
    ({"chosen": [user("q"), bot("x")], "rejected": [user("q"), bot("y"), user("z")]},
     "bad_messages", "rejected[2].role", "is 'user': the final message is the response"),
    ({**PAIR, "rejected": "yes"}, "identical_responses", "rejected", "'chosen'"),
    ({"chosen": [user("q"), bot("x")], "rejected": [user("q"), bot("x")]},
     "identical_responses", "rejected", "'chosen'"),
    ({**RANKED, "responses": ["a", "b", "a"]}, "identical_responses", "responses[2]", "'responses[0]'"),
    ({**PAIR, "chosen": [{"role": "bot", "content": "x"}], "rejected": [bot("y")]},
     "bad_messages", "chosen[0].role", "unknown role 'bot'"),
    ({**PAIR, "chosen": [bot("x")], "rejected": [user("q"), {"role": "assistant"}]},
     "bad_messages", "rejected[1].content", "missing"),
    ({**PAIR, "chosen": [bot("x")], "rejected": [{"role": "assistant", "content": None}]},
     "bad_messages", "rejected[0].content", "got null"),
    ({**PAIR, "chosen": ["hello"], "rejected": [bot("y")]}, "bad_messages", "chosen[0]", "got a string"),
    ({**PAIR, "margin": "1.0"}, "bad_margin", "margin", "got a string"),
    ({**PAIR, "margin": True}, "bad_margin", "margin", "got a boolean"),
    (b'{"chosen": "a", "rejected": "b", "margin": NaN}', "bad_margin", "margin", "finite"),
    ({**RANKED, "margin": 1.0}, "bad_margin", "margin", "pairs only"),
    ({"responses": ["a", "b"]}, "bad_ranking", "ranking", "missing"),
    ({**RANKED, "ranking": [0, 0, 1]}, "bad_ranking", "ranking", "each index once"),
    ({**RANKED, "ranking": [0, 1, 3]}, "bad_ranking", "ranking", "each index once"),
    ({**RANKED, "ranking": [0, 1]}, "bad_ranking", "ranking", "each index once"),
    ({**RANKED, "ranking": [0, True, 2]}, "bad_ranking", "ranking", "whole numbers"),
    ({**RANKED, "ranking": [0, 1.0, 2]}, "bad_ranking", "ranking", "whole numbers"),
    ({**PAIR, "labels": [[1]]}, "bad_labels", "labels", "one entry per response (2), got 1"),
    ({**PAIR, "labels": {"a": 1}}, "bad_labels", "labels", "got an object"),
    ({**PAIR, "labels": [[1], []]}, "bad_labels", "labels[1]", "empty list"),
    ({**PAIR, "labels": [[1, 2], [3]]}, "bad_labels", "labels[1]", "has 1 values but labels[0] has 2"),
    ({**PAIR, "labels": [[1, "x"], [3, 4]]}, "bad_labels", "labels[0][1]", "'x'"),
    ({**PAIR, "labels": [[1], [False]]}, "bad_labels", "labels[1][0]", "False"),
    (b'{"chosen": "a", "rejected": "b", "labels": [[1], [Infinity]]}', "bad_labels", "labels[1][0]", "inf"),
    ({**SINGLE, "chosen": "no"}, "mixed_shapes", "chosen", "cannot also have 'chosen'"),
    ({**SINGLE, "rejected": "no"}, "mixed_shapes", "rejected", "cannot also have 'rejected'"),
    ({**SINGLE, "responses": ["a", "b"], "ranking": [0, 1]}, "mixed_shapes", "responses", "'response'"),
    ({**SINGLE, "response": 3}, "wrong_type", "response", "got a number"),
    ({**SINGLE, "response": "  "}, "empty_response", "response", "empty"),
    ({**SINGLE, "response": []}, "empty_response", "response", "no messages"),
    ({**SINGLE, "response": [user("q"), bot("")]}, "empty_response", "response[1].content", "final message"),
    ({**SINGLE, "response": ["yes", "no"]}, "bad_messages", "response[0]", "got a string"),
    ({**SINGLE, "margin": 1.0}, "bad_margin", "margin", "single response"),
    ({**SINGLE, "ranking": [0]}, "bad_ranking", "ranking", "single response"),
    ({**SINGLE, "labels": []}, "bad_labels", "labels", "empty list"),
    ({**SINGLE, "labels": "0.7"}, "bad_labels", "labels", "a number or a list of numbers"),
    ({**SINGLE, "labels": True}, "bad_labels", "labels", "got a boolean"),
    ({**SINGLE, "labels": [[0.7]]}, "bad_labels", "labels[0]", "[0.7]"),
    ({**SINGLE, "labels": [0.7, "x"]}, "bad_labels", "labels[1]", "'x'"),
    (b'{"response": "a", "labels": NaN}', "bad_labels", "labels", "finite"),
]


@pytest.mark.parametrize("row, reason, field, words", PROBLEMS)
def test_problem_names_reason_field_and_location(row, reason, field, words):
    problem = parse(row)
    assert isinstance(problem, RowProblem)
    assert (problem.reason, problem.field) == (reason, field)
    assert words in problem.message
    assert str(problem).startswith(WHERE + ": ")
    assert (f"field '{field}'" in str(problem)) == (field is not None)


def test_every_reason_is_tested():
    # Step rows' own reasons are tested with them (tests/data/test_steps.py).
    assert {reason for _, reason, _, _ in PROBLEMS} == set(REASONS) - {"bad_steps", "bad_separator"}


def test_parse_row_and_its_results_cross_process_boundaries():
    assert pickle.loads(pickle.dumps(parse_row)) is parse_row
    for row in ({"chosen": [user("q"), bot("x")], "rejected": [user("q"), bot("y")]}, {**PAIR, "chosen": 1}):
        result = parse(row)
        assert pickle.loads(pickle.dumps(result)) == result


def problem(index, reason="wrong_type"):
    return RowProblem(f"train.jsonl:{index}", "chosen", reason, "expected a string, got a number")


def test_problem_log_counts_all_and_shows_the_first_five():
    log = ProblemLog()
    for index in range(1, 9):
        log.add(problem(index, "missing_field" if index % 3 == 0 else "wrong_type"))
    assert (log.total, log.counts) == (8, {"wrong_type": 6, "missing_field": 2})
    message = log.error_message("train.jsonl")
    assert message.startswith("train.jsonl: 8 invalid row(s):\n")
    assert all(str(problem(index)) in message for index in range(1, 6))
    assert "train.jsonl:6" not in message and "train.jsonl:7" not in message
    assert "... and 3 more" in message
    assert "wrong_type 6, missing_field 2" in message
    assert "data.on_invalid=skip" in message


def test_problem_log_without_more_says_no_more():
    log = ProblemLog(shown=2)
    log.add(problem(1))
    assert "more" not in log.error_message("train.jsonl")


def test_rows_to_score_keep_their_order_and_may_repeat_or_stand_alone():
    row = {"prompt": "p", "responses": [" b", " a", " b"], "ranking": [1, 0, 2]}
    scored = parse_row(RawRow(WHERE, json.dumps(row).encode()), scoring=True)
    assert scored.responses == (" b", " a", " b")  # a ranking is not applied, repeats are allowed
    alone = parse_row(RawRow(WHERE, json.dumps({"prompt": "p", "responses": [" a"]}).encode()), scoring=True)
    assert alone.responses == (" a",)
    for training in (row, {"prompt": "p", "responses": [" a"]}):
        assert isinstance(parse(training), RowProblem)
    empty = parse_row(RawRow(WHERE, json.dumps({"prompt": "p", "responses": [" a", " "]}).encode()), scoring=True)
    assert (empty.reason, empty.field) == ("empty_response", "responses[1]")
