"""Tests for reading preference pairs from JSON Lines (megatron_rm.data.preference)."""

import json

import pytest

from megatron_rm.data.preference import PreferencePair, read_pairs
from megatron_rm.errors import DataError


def row(prompt="P", chosen="C", rejected="R", **extra) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra})


def write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_error(path) -> str:
    with pytest.raises(DataError) as info:
        read_pairs(path)
    return str(info.value)


def test_valid_file_with_blank_line(tmp_path):
    path = write(tmp_path, [
        row("User: hi\nAssistant:", " hello", " go away"),
        "",
        "   ",
        row("Q", "yes", "no", source="extra fields are ignored"),
    ])
    assert read_pairs(path) == [
        PreferencePair("User: hi\nAssistant:", " hello", " go away"),
        PreferencePair("Q", "yes", "no"),
    ]


def test_accepts_str_path_and_unicode(tmp_path):
    path = write(tmp_path, [row("¿Qué?", "sí — ✓", "no")])
    assert read_pairs(str(path)) == [PreferencePair("¿Qué?", "sí — ✓", "no")]


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "train.jsonl"
    message = read_error(path)
    assert str(path) in message


def test_directory_is_not_a_data_file(tmp_path):
    assert str(tmp_path) in read_error(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    message = read_error(path)
    assert str(path) in message
    assert "empty" in message


def test_only_blank_lines_counts_as_empty(tmp_path):
    path = write(tmp_path, ["", "  ", ""])
    assert "empty" in read_error(path)


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, [row(), '{"prompt": "P", "chosen": ', row()])
    message = read_error(path)
    assert f"{path}:2" in message
    assert "invalid JSON" in message


def test_missing_chosen_field(tmp_path):
    path = write(tmp_path, [row(), row(), json.dumps({"prompt": "P", "rejected": "R"})])
    message = read_error(path)
    assert f"{path}:3" in message
    assert "chosen" in message


def test_non_string_rejected_names_field_and_type(tmp_path):
    path = write(tmp_path, [json.dumps({"prompt": "P", "chosen": "C", "rejected": 5})])
    message = read_error(path)
    assert f"{path}:1" in message
    assert "rejected" in message
    assert "int" in message


def test_null_field_names_its_type(tmp_path):
    path = write(tmp_path, [json.dumps({"prompt": None, "chosen": "C", "rejected": "R"})])
    message = read_error(path)
    assert "prompt" in message
    assert "NoneType" in message


def test_json_array_row(tmp_path):
    path = write(tmp_path, [row(), json.dumps(["P", "C", "R"])])
    message = read_error(path)
    assert f"{path}:2" in message
    assert "object" in message
    assert "list" in message


def test_line_numbers_count_blank_lines(tmp_path):
    path = write(tmp_path, [row(), "", "not json"])
    assert f"{path}:3" in read_error(path)


def test_many_bad_rows_show_first_five_and_count_all(tmp_path):
    good, bad = row(), "not json"
    lines = [good, bad, bad, good, bad, bad, bad, bad, bad, bad, good]
    path = write(tmp_path, lines)
    bad_lines = [n for n, line in enumerate(lines, start=1) if line == bad]
    assert len(bad_lines) == 8
    message = read_error(path)
    assert "8 invalid" in message
    for n in bad_lines[:5]:
        assert f"{path}:{n}:" in message
    for n in bad_lines[5:]:
        assert f"{path}:{n}:" not in message
    assert "3 more" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=f"{path}:2: not valid UTF-8"):
        read_pairs(path)
