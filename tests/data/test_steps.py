"""Step-labelled rows (TRL stepwise, PRM800K ratings, Math-Shepherd tags) and outcome rows: parsing,
where each label lands on the tokens, the neutral mapping, truncation, and every bad input named by
file, line and field (or skipped and counted)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast

from megatron_rm.data.batching import collate
from megatron_rm.data.prepare import Settings, build_store
from megatron_rm.data.rows import RowKeys
from megatron_rm.data.sources import RawRow
from megatron_rm.data.step_tokens import StepEncoder
from megatron_rm.data.steps import Labelling, parse_outcome, parse_steps
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import encode, load_tokenizer
from megatron_rm.errors import DataError
from tests.conftest import DEMO
from tests.data.tokenizer_variants import save_variant

TOKENIZER = str(DEMO / "tokenizer")
STEPS_ROW = {"prompt": "User: Name 2 fruits.\nAssistant:", "completions": ["1. mango", "2. apple"],
             "labels": [True, False]}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


def _store(tmp_path, rows, grouping="steps", labelling=None, tokenizer=TOKENIZER, max_length=64,
           truncation="drop", on_invalid="error", name="store"):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    settings = Settings(str(tokenizer), max_length, truncation, on_invalid=on_invalid, grouping=grouping,
                        labelling=labelling or Labelling())
    meta = build_store([data], tmp_path / name, settings, progress_every=0)
    return GroupStore(tmp_path / name), meta


def _labelled(store, tokenizer, group=0):
    """(token text, target) of every labelled token of a group's document."""
    ids, targets = store.documents(group)[0], store.token_targets(group)[0]
    return [(tokenizer.decode(ids[: p + 1])[-10:], float(targets[p])) for p in np.flatnonzero(~np.isnan(targets))]


def test_each_step_label_sits_on_the_separator_ending_the_step(tmp_path, tokenizer):
    store, meta = _store(tmp_path, [STEPS_ROW])
    ids, targets = store.documents(0)[0], store.token_targets(0)[0]
    labelled = np.flatnonzero(~np.isnan(targets))
    assert [tokenizer.convert_ids_to_tokens(int(ids[p])) for p in labelled] == ["\n", "\n"]
    assert targets[labelled].tolist() == [1.0, 0.0]
    # The label tokens close "1. mango\n" and "2. apple\n"; the text is prompt + steps + EOS, as TRL lays it out.
    full = encode(tokenizer, STEPS_ROW["prompt"], "1. mango\n2. apple\n")
    assert ids.tolist() == full.ids and store.prompt_lengths(0) == [full.prompt_tokens]
    assert tokenizer.decode(ids[: labelled[0] + 1]).endswith("mango\n")
    assert labelled.min() >= full.prompt_tokens and meta["groups"] == 1


@pytest.mark.parametrize("neutral, expected", [("negative", [1.0, 0.0, 0.0]), ("positive", [1.0, 1.0, 0.0]),
                                               ("ignore", [1.0, math.nan, 0.0])])
def test_prm800k_ratings_follow_the_configured_neutral_mapping(tmp_path, tokenizer, neutral, expected):
    row = {**STEPS_ROW, "completions": ["1. mango", "2. apple", "3. cat"], "labels": [1, 0, -1]}
    store, _ = _store(tmp_path, [row], labelling=Labelling(neutral=neutral))
    ids, targets = store.documents(0)[0], store.token_targets(0)[0]
    newlines = [p for p, i in enumerate(ids) if tokenizer.convert_ids_to_tokens(int(i)) == "\n"][-3:]
    np.testing.assert_array_equal(targets[newlines], np.array(expected, dtype=np.float32))


def test_three_classes_keep_neutral_as_its_own_class_and_soft_labels_stay_soft(tmp_path, tokenizer):
    row = {**STEPS_ROW, "completions": ["1. mango", "2. apple", "3. cat"], "labels": [1, 0, -1]}
    store, _ = _store(tmp_path, [row], labelling=Labelling(num_classes=3))
    assert [value for _, value in _labelled(store, tokenizer)] == [2.0, 1.0, 0.0]
    soft, _ = _store(tmp_path, [{**STEPS_ROW, "labels": [0.7, 0.25]}], name="soft")
    assert [value for _, value in _labelled(soft, tokenizer)] == pytest.approx([0.7, 0.25], abs=1e-7)


def test_outcome_rows_label_every_response_token_and_the_eos_but_no_prompt_token(tmp_path, tokenizer):
    row = {"prompt": "User: Name 1 fruit.\nAssistant:", "response": " 1. mango", "label": 1}
    store, _ = _store(tmp_path, [row, {**row, "label": 0.25}, {**row, "label": False}], grouping="outcomes")
    full = encode(tokenizer, row["prompt"], row["response"])
    for group, value in enumerate([1.0, 0.25, 0.0]):
        targets = store.token_targets(group)[0]
        assert np.isnan(targets[: full.prompt_tokens]).all()
        np.testing.assert_array_equal(targets[full.prompt_tokens:], np.float32(value))


def test_conversational_rows_place_labels_inside_the_chat_template(tmp_path):
    chat = save_variant(tmp_path / "chat", chat=True)
    tokenizer = load_tokenizer(chat)
    row = {"prompt": [{"role": "user", "content": "Name 2 fruits."}], "completions": ["1. mango", "2. apple"],
           "labels": [False, True]}
    store, _ = _store(tmp_path, [row], tokenizer=chat, max_length=128)
    assert _labelled(store, tokenizer) == [("\n1. mango\n", 0.0), ("\n2. apple\n", 1.0)]
    outcome = {"messages": [{"role": "user", "content": "Name 1 fruit."}, {"role": "assistant", "content": "mango"}],
               "label": True}
    store, _ = _store(tmp_path, [outcome], grouping="outcomes", tokenizer=chat, max_length=128, name="outcome")
    targets, prompt = store.token_targets(0)[0], store.prompt_lengths(0)[0]
    assert np.isnan(targets[:prompt]).all() and (targets[prompt:] == 1).all()


def test_math_shepherd_rows_label_each_step_tag(tmp_path, tokenizer):
    text = "Name 2 fruits. 1. mango ки\n2. cat ки"
    row = {"input": text, "label": "Name 2 fruits. 1. mango +\n2. cat -"}
    store, _ = _store(tmp_path, [row])
    ids, targets = store.documents(0)[0], store.token_targets(0)[0]
    labelled = np.flatnonzero(~np.isnan(targets))
    assert targets[labelled].tolist() == [1.0, 0.0]
    # Each label is on the last token of its step's tag: the text up to it ends with the tag.
    assert all(tokenizer.decode(ids[: p + 1], skip_special_tokens=False).replace("<unk>", "?").endswith("?")
               for p in labelled)
    assert ids[-1] == tokenizer.eos_token_id and labelled[-1] == len(ids) - 2


def test_a_truncated_response_keeps_the_labels_it_still_holds(tmp_path, tokenizer):
    full, _ = _store(tmp_path, [STEPS_ROW], name="full")
    ids = full.documents(0)[0]
    first_label = int(np.flatnonzero(~np.isnan(full.token_targets(0)[0]))[0])
    # Cut after the first step's separator: one label left, the EOS in the second step's place.
    cut, meta = _store(tmp_path, [STEPS_ROW], max_length=first_label + 2, truncation="truncate_response", name="cut")
    assert cut.token_targets(0)[0][first_label] == 1.0 and np.isnan(cut.token_targets(0)[0]).sum() == first_label + 1
    # Cut before it: nothing left to learn, and the drop is counted.
    with pytest.raises(DataError, match="no usable rows"):
        _store(tmp_path, [STEPS_ROW], max_length=first_label, truncation="truncate_response", name="none")
    _, meta = _store(tmp_path, [STEPS_ROW, STEPS_ROW | {"prompt": "Q:"}], max_length=first_label,
                     truncation="truncate_response", name="counted")
    assert meta["dropped"] == {"no_labelled_step": 1}
    # Cutting the prompt moves every label left by what was cut.
    short, _ = _store(tmp_path, [STEPS_ROW], max_length=len(ids) - 3, truncation="truncate_prompt", name="short")
    np.testing.assert_array_equal(short.token_targets(0)[0], full.token_targets(0)[0][3:])


def test_collated_targets_follow_the_ids_padded_and_packed(tmp_path):
    rows = [STEPS_ROW, {**STEPS_ROW, "completions": ["1. fig"], "labels": [0.5]}]
    store, _ = _store(tmp_path, rows)
    for packed in (False, True):
        batch = collate(store, [0, 1], 0, packed=packed, pad_to_multiple_of=8)
        real = batch.attention_mask > 0
        stored = np.concatenate([store.token_targets(g)[0] for g in (0, 1)])
        np.testing.assert_array_equal(batch.token_targets[real].numpy(), stored)
        assert batch.token_targets[~real].isnan().all()


def _tab_dropping_tokenizer(folder):
    """The demo vocabulary with a normalizer that deletes tabs: a tab separator tokenizes into nothing."""
    backend = Tokenizer.from_file(str(DEMO / "tokenizer" / "tokenizer.json"))
    backend.normalizer = normalizers.Replace("\t", "")
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(str(folder))
    return folder


BAD_ROWS = [
    ({**STEPS_ROW, "labels": [True]}, "labels", "has 1 labels for 2 steps"),
    ({**STEPS_ROW, "labels": [True, 2]}, "labels[1]", "an integer rating must be -1, 0 or 1"),
    ({**STEPS_ROW, "labels": [1.5, True]}, "labels[0]", "a float label is a probability in [0, 1]"),
    ({**STEPS_ROW, "labels": ["yes", True]}, "labels[0]", "expected true/false"),
    ({**STEPS_ROW, "completions": ["1. mango", " "]}, "completions[1]", "empty step"),
    ({**STEPS_ROW, "completions": ["1. mango", 3]}, "completions[1]", "expected a string"),
    ({**STEPS_ROW, "completions": []}, "completions", "expected a non-empty list"),
    ({"prompt": "Q:", "labels": [True]}, "completions", "missing"),
    ({"input": "a ки b ки", "label": "a + b ?"}, "label", "expected '+' or '-'"),
    ({"input": "a ки b ки", "label": "a + c +"}, "label", "differs from the input's text in step 2"),
    ({"input": "a ки b ки tail", "label": "a + b + tail"}, "input", "text after the last step tag"),
    ({"input": "no tags"}, "input", "has no step tag"),
]


@pytest.mark.parametrize("row, field, message", BAD_ROWS)
def test_bad_step_rows_name_file_line_and_field(tmp_path, row, field, message):
    with pytest.raises(DataError) as error:
        _store(tmp_path, [STEPS_ROW, row])
    assert f"store.jsonl:2: field '{field}': {message}" in str(error.value)


def test_a_float_label_needs_two_classes(tmp_path):
    with pytest.raises(DataError, match=r"store.jsonl:1: field 'labels\[0\]': .*needs 2 classes"):
        _store(tmp_path, [{**STEPS_ROW, "labels": [0.5, True]}], labelling=Labelling(num_classes=3))


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "Q:", "response": " a", "label": 2}, "label", "expected true/false, 0/1 or a probability"),
    ({"prompt": "Q:", "response": " a"}, "label", "missing"),
    ({"prompt": "Q:", "label": 1}, "response", "missing"),
])
def test_bad_outcome_rows_name_file_line_and_field(tmp_path, row, field, message):
    good = {"prompt": "Q:", "response": " a", "label": 1}
    with pytest.raises(DataError) as error:
        _store(tmp_path, [good, row], grouping="outcomes")
    assert f"store.jsonl:2: field '{field}': {message}" in str(error.value)


def test_a_separator_that_merges_with_the_next_step_is_refused(tmp_path):
    # With " " between steps, the tokenizer reads the space and the next word as one token.
    row = {"prompt": "Q:", "completions": ["mango", "apple"], "labels": [True, True]}
    with pytest.raises(DataError, match=r"store.jsonl:1: field 'completions\[0\]': the separator merges with the "
                                        r"text after it"):
        _store(tmp_path, [row], labelling=Labelling(separator=" "))
    # An empty separator lets " c" and "at" become the one token " cat".
    with pytest.raises(DataError, match="merges"):
        _store(tmp_path, [{**row, "completions": [" c", "at"]}], labelling=Labelling(separator=""), name="empty")


def test_a_separator_that_tokenizes_into_nothing_is_refused_or_skipped_and_counted(tmp_path):
    tabs = _tab_dropping_tokenizer(tmp_path / "tabs")
    row = {"prompt": "Q:", "completions": ["1. mango", "2. apple"], "labels": [True, False]}
    with pytest.raises(DataError, match=r"field 'completions\[0\]': the separator after this step tokenizes into "
                                        r"nothing"):
        _store(tmp_path, [row], tokenizer=tabs, labelling=Labelling(separator="\t"))
    store, meta = _store(tmp_path, [STEPS_ROW, {**STEPS_ROW, "labels": [True]}, STEPS_ROW], on_invalid="skip",
                         name="skipped")
    assert meta["invalid"] == {"bad_labels": 1} and len(store) == 2


def test_parsing_for_scoring_needs_no_labels():
    keys, labelling = RowKeys(), Labelling()
    raw = RawRow("f.jsonl:1", json.dumps({"prompt": "Q:", "completions": ["a", "b"]}).encode())
    parsed = parse_steps(raw, keys, labelling, scoring=True)
    assert parsed.steps == ("a", "b") and parsed.ratings is None and parsed.separator == "\n"
    outcome = parse_outcome(RawRow("f.jsonl:2", json.dumps({"prompt": "Q:", "response": " a"}).encode()), keys,
                            labelling, scoring=True)
    assert outcome.outcome and outcome.ratings is None


def test_the_encoder_reports_a_placement_problem_as_a_row_problem(tokenizer):
    keys, labelling = RowKeys(), Labelling(separator=" ")
    row = parse_steps(RawRow("f.jsonl:7", json.dumps({"prompt": "Q:", "completions": ["mango", "apple"],
                                                      "labels": [True, True]}).encode()), keys, labelling)
    [problem] = StepEncoder(tokenizer, 64, "drop", labelling).encode_groups([row])
    assert (problem.location, problem.field, problem.reason) == ("f.jsonl:7", "completions[0]", "bad_separator")
