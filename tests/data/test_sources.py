"""Tests for streaming raw rows out of every supported data format (megatron_rm.data.sources)."""

import inspect
import json
import tracemalloc

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_rm.data.sources import RawRow, iter_raw_rows
from megatron_rm.errors import DataError

# Same keys and value types in every row, so Arrow-backed formats give back exactly these dicts.
ROWS = [
    {"prompt": "¿Qué?", "chosen": [{"role": "user", "content": "hi"}], "rejected": None, "margin": 1.5},
    {"prompt": "Q2", "chosen": [{"role": "assistant", "content": ""}], "rejected": "no", "margin": None},
    {"prompt": "Q3", "chosen": [], "rejected": "maybe", "margin": -2.0},
]


def write_jsonl(path, rows, blank_after_first=False):
    lines = [json.dumps(row) + "\n" for row in rows]
    if blank_after_first:
        lines.insert(1, "   \n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_parquet(path, rows, **options):
    pq.write_table(pa.Table.from_pylist(rows), path, **options)
    return path


def write_saved(path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def rows_of(path) -> list[tuple[str, object]]:
    return [(raw.location, json.loads(raw.payload) if isinstance(raw.payload, bytes) else raw.payload)
            for raw in iter_raw_rows(path)]


@pytest.mark.parametrize("write, name", [
    (write_json, "rows.json"), (write_parquet, "rows.parquet"), (write_saved, "saved")])
def test_array_formats_give_the_rows_in_order_with_row_numbers(tmp_path, write, name):
    path = write(tmp_path / name, ROWS)
    assert rows_of(path) == [(f"{path}:row {index}", row) for index, row in enumerate(ROWS)]


def test_jsonl_counts_blank_lines_in_locations_but_yields_no_row_for_them(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS, blank_after_first=True)
    assert rows_of(path) == [(f"{path}:1", ROWS[0]), (f"{path}:3", ROWS[1]), (f"{path}:4", ROWS[2])]


def test_str_path_is_accepted(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert [raw.location for raw in iter_raw_rows(str(path))] == [f"{path}:{n}" for n in (1, 2, 3)]


def test_folder_of_shards_reads_every_data_file_by_name(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    # Written out of name order, with a file that is not data, to show both are handled.
    write_parquet(folder / "part-1.parquet", ROWS[1:])
    write_jsonl(folder / "part-0.jsonl", ROWS[:1])
    (folder / "README.md").write_text("not data")
    assert rows_of(folder) == [
        (f"{folder / 'part-0.jsonl'}:1", ROWS[0]),
        (f"{folder / 'part-1.parquet'}:row 0", ROWS[1]),
        (f"{folder / 'part-1.parquet'}:row 1", ROWS[2]),
    ]


def test_jsonl_rows_stay_unparsed_bytes(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "P"}\n{not json\n\xff\xfe\n')
    rows = iter_raw_rows(path)
    assert inspect.isgenerator(rows)
    assert [raw.payload for raw in rows] == [b'{"prompt": "P"}\n', b"{not json\n", b"\xff\xfe\n"]


def test_jsonl_streams_in_constant_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    line = b'{"prompt": "' + b"x" * 390 + b'"}\n'
    path.write_bytes(line + b"{broken json " * 8 + b"\n" + line * 50_000)  # ~20 MB
    tracemalloc.start()
    try:
        rows = iter_raw_rows(path)
        assert next(rows).payload == line
        after_first_row = tracemalloc.get_traced_memory()[1]
        assert sum(1 for _ in rows) == 50_001
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert after_first_row < 1_000_000
    assert peak < 1_000_000


def test_parquet_streams_a_batch_at_a_time(tmp_path):
    rows = [{"prompt": "p" * 50, "chosen": "c" * 50, "rejected": str(index)} for index in range(100_000)]
    path = write_parquet(tmp_path / "big.parquet", rows, row_group_size=1000)
    before = pa.total_allocated_bytes()
    raw_rows = iter_raw_rows(path)
    assert next(raw_rows) == RawRow(f"{path}:row 0", rows[0])
    # The whole table takes over 10 MB in Arrow memory; one row group is about a hundredth of it.
    assert pa.total_allocated_bytes() - before < 2_000_000


def test_json_array_keeps_non_object_elements_for_validation_to_report(tmp_path):
    path = write_json(tmp_path / "rows.json", [ROWS[0], "just text", 7])
    assert [raw.payload for raw in iter_raw_rows(path)] == [ROWS[0], "just text", 7]


def test_json_that_is_not_an_array_names_the_file_and_what_was_found(tmp_path):
    path = write_json(tmp_path / "rows.json", ROWS[0])
    with pytest.raises(DataError, match="expected a JSON array.*found an object") as info:
        list(iter_raw_rows(path))
    assert str(path) in str(info.value)


def test_malformed_json_array_gives_line_and_column(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "P"},\n {"prompt": }]')
    with pytest.raises(DataError, match=r"invalid JSON .* line 2, column 13"):
        list(iter_raw_rows(path))


def test_dataset_dict_folder_asks_for_one_split(tmp_path):
    folder = tmp_path / "dict"
    split = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))
    with pytest.raises(DataError, match="several splits") as info:
        iter_raw_rows(folder)
    assert str(folder / "train") in str(info.value)


def test_missing_path_fails_at_the_call_not_at_the_first_row(tmp_path):
    path = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(DataError) as info:
        iter_raw_rows(path)
    assert str(info.value) == f"{path}: no such data file or folder"


def test_unknown_extension_lists_the_supported_formats(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"'\.csv'.*\.jsonl.*\.json\b.*\.parquet.*save_to_disk") as info:
        iter_raw_rows(path)
    assert str(path) in str(info.value)


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match="no .jsonl, .json or .parquet files") as info:
        iter_raw_rows(tmp_path)
    assert str(tmp_path) in str(info.value)
