"""Read -> validate -> tokenize -> store: formats, workers, invalid rows, drops, single responses, reuse,
the preprocess tool."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_rm.config import RMConfig
from megatron_rm.data.batching import collate
from megatron_rm.data.prepare import Settings, build_store, check_compatible, open_split
from megatron_rm.data.rows import RowKeys
from megatron_rm.data.sampler import GroupSampler
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import fingerprint, load_tokenizer
from megatron_rm.errors import DataError
from megatron_rm.scoring.inputs import InputEncoder
from tests.conftest import DEMO, PYTHON, REPO, run_command
from tests.data.tokenizer_variants import save_variant

TOKENIZER = str(DEMO / "tokenizer")
FINGERPRINT = fingerprint(load_tokenizer(TOKENIZER))
ARRAYS = ("tokens.bin", "documents.npy", "groups.npy", "margins.npy", "prompt_keys.npy")


def rows(n=30):
    out = []
    for i in range(n):
        count = i % 5 + 2
        items = " ".join(f"{k}. fig" for k in range(1, count + 1))
        out.append({"prompt": f"User: Name {count} fruits.\nAssistant:", "chosen": " " + items,
                    "rejected": " " + items.rsplit(" ", 2)[0]})
    return out


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def settings(**changes):
    return Settings(**{"tokenizer": TOKENIZER, "max_length": 64, "truncation": "drop", **changes})


def scored_ids(encoder: InputEncoder, texts) -> list:
    """What a scorer gets for each (prompt, response) of `texts`: the ids, None where refused."""
    return [one.ids for one in encoder.texts(texts)]


def same_store(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in ARRAYS)


def test_every_format_gives_the_same_store(tmp_path):
    records = rows()
    jsonl = write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    import datasets
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "hf"))
    reference = tmp_path / "s_jsonl"
    meta = build_store([jsonl], reference, settings())
    assert meta["rows"] == meta["groups"] == 30 and meta["documents"] == 60
    for name, source in (("json", tmp_path / "d.json"), ("parquet", tmp_path / "d.parquet"), ("hf", tmp_path / "hf")):
        build_store([source], tmp_path / f"s_{name}", settings())
        assert same_store(reference, tmp_path / f"s_{name}"), name
    # The stored ids are exactly what the shared encoder gives.
    store, encoder = GroupStore(reference), InputEncoder(load_tokenizer(TOKENIZER), 64)
    for g in (0, 17):
        expected = scored_ids(encoder, [(records[g]["prompt"], records[g][side]) for side in ("chosen", "rejected")])
        assert [d.tolist() for d in store.documents(g)] == expected


def test_worker_processes_give_the_same_store(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", rows(1500))  # several chunks per worker
    build_store([source], tmp_path / "one", settings(), workers=1)
    build_store([source], tmp_path / "two", settings(), workers=2)
    assert same_store(tmp_path / "one", tmp_path / "two")


BAD_LINES = [
    "{not json",
    json.dumps({"prompt": "p", "chosen": "a"}),
    json.dumps({"prompt": "p", "chosen": "a", "rejected": 3}),
    json.dumps({"prompt": "p", "chosen": " ", "rejected": "b"}),
    json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}),
    json.dumps({"chosen": [{"role": "wizard", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}),
    '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}',
]


def test_invalid_rows_stop_the_build_naming_file_line_and_field(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [*rows(3), *BAD_LINES])
    with pytest.raises(DataError) as info:
        build_store([source], tmp_path / "store", settings())
    message = str(info.value)
    assert f"{source}: 7 invalid row(s)" in message
    assert f"{source}:4: invalid JSON" in message
    assert f"{source}:5: field 'rejected'" in message
    assert f"{source}:6: field 'rejected'" in message and "string" in message
    assert "... and 2 more" in message and "data.on_invalid=skip" in message
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".*incomplete"))


def test_skip_counts_invalid_rows_by_reason(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [*rows(3), *BAD_LINES])
    meta = build_store([source], tmp_path / "store", settings(on_invalid="skip"))
    assert meta["rows"] == 10 and meta["groups"] == 3
    assert meta["invalid"] == {"invalid_json": 1, "missing_field": 1, "wrong_type": 1, "empty_response": 1,
                               "identical_responses": 1, "bad_messages": 1, "bad_margin": 1}
    # A store that left rows out is refused by a run that wants every row valid.
    with pytest.raises(DataError, match="left out 7 invalid row"):
        check_compatible(tmp_path / "store", settings(), FINGERPRINT)


def test_drops_are_counted_by_reason(tmp_path):
    long = {"prompt": "User: Name 9 fruits.\nAssistant:", "chosen": " 1. fig" * 30, "rejected": " 1. fig"}
    # Two characters the demo vocabulary lacks: both become <unk>, so the texts differ and the ids do not.
    same_ids = {"prompt": "User: hi\nAssistant:", "chosen": " 1. fig\u2603", "rejected": " 1. fig\u2604"}
    source = write_jsonl(tmp_path / "d.jsonl", [*rows(4), long, same_ids, long])
    meta = build_store([source], tmp_path / "store", settings())
    assert meta["dropped"] == {"too_long": 2, "identical_tokens": 1} and meta["groups"] == 4
    kept = build_store([source], tmp_path / "cut", settings(truncation="truncate_response"))
    assert kept["dropped"] == {"identical_tokens": 1} and kept["groups"] == 6


def test_kwise_margins_labels_and_messages_are_stored(tmp_path):
    tokenizer = save_variant(tmp_path / "chat", chat=True)
    records = [
        {"prompt": "User: Name 2 fruits.\nAssistant:", "responses": [" 1. fig", " 1. fig 2. kiwi", " 1. lime"],
         "ranking": [1, 0, 2], "labels": [[0.1, None], [0.9, 0.8], [0.2, 0.3]]},
        {"prompt": "User: hi\nAssistant:", "chosen": " 1. fig", "rejected": " 1. kiwi", "margin": 2.5},
        {"chosen": [{"role": "user", "content": "Name 1 fruit."}, {"role": "assistant", "content": "1. fig"}],
         "rejected": [{"role": "user", "content": "Name 1 fruit."}, {"role": "assistant", "content": "fig"}]},
    ]
    source = write_jsonl(tmp_path / "d.jsonl", records)
    build_store([source], tmp_path / "store", settings(tokenizer=str(tokenizer)))
    store = GroupStore(tmp_path / "store")
    encoder = InputEncoder(load_tokenizer(tokenizer), 64)
    ranked = [d.tolist() for d in store.documents(0)]
    assert ranked == scored_ids(encoder, [(records[0]["prompt"], records[0]["responses"][i]) for i in (1, 0, 2)])
    np.testing.assert_array_equal(store.group_labels(0), np.float32([[0.9, 0.8], [0.1, np.nan], [0.2, 0.3]]))
    assert store.margin(0) is None and store.margin(1) == 2.5
    prompt = ({"role": "user", "content": "Name 1 fruit."},)
    response = ({"role": "assistant", "content": "1. fig"},)
    assert [store.documents(2)[0].tolist()] == scored_ids(encoder, [(prompt, response)])
    assert store.prompt_keys[1] != store.prompt_keys[2]


def test_single_response_rows_become_groups_of_one(tmp_path):
    tokenizer = save_variant(tmp_path / "chat", chat=True)
    records = [
        {"prompt": "User: Name 2 fruits.\nAssistant:", "response": " 1. fig 2. kiwi", "labels": [0.7, None]},
        {"response": [{"role": "user", "content": "Name 1 fruit."}, {"role": "assistant", "content": "1. fig"}],
         "labels": [0.1, 0.2]},
        {"prompt": "User: hi\nAssistant:", "response": " 1. lime", "labels": [None, 0.5]},
        {"prompt": "User: hi\nAssistant:", "chosen": " 1. fig", "rejected": " 1. kiwi", "labels": [[1, 1], [0, 0]]},
    ]
    source = write_jsonl(tmp_path / "d.jsonl", records)
    meta = build_store([source], tmp_path / "store", settings(tokenizer=str(tokenizer)))
    assert (meta["groups"], meta["documents"], meta["num_labels"]) == (4, 5, 2)
    store = GroupStore(tmp_path / "store")
    assert store.group_sizes().tolist() == [1, 1, 1, 2]
    encoder = InputEncoder(load_tokenizer(tokenizer), 64)
    conversation = (({"role": "user", "content": "Name 1 fruit."},), ({"role": "assistant", "content": "1. fig"},))
    first, third = ((records[g]["prompt"], records[g]["response"]) for g in (0, 2))
    assert [store.documents(g)[0].tolist() for g in range(3)] == scored_ids(encoder, [first, conversation, third])
    np.testing.assert_array_equal(store.group_labels(0), np.float32([[0.7, np.nan]]))
    # Sampled and collated like any group: a single response adds a document to score, no pair.
    step = GroupSampler(store.document_lengths()[0], global_batch_size=4, seed=0).global_batch(0)
    batch = collate(store, step, 0, packed=False)
    assert sorted(batch.group_sizes.tolist()) == [1, 1, 1, 2] and batch.num_pairs == 1
    singles = collate(store, [2, 0], 0, packed=True)
    assert singles.comparisons.shape == (0, 2) and singles.group_sizes.tolist() == [1, 1]
    np.testing.assert_array_equal(singles.labels.numpy(), np.float32([[np.nan, 0.5], [0.7, np.nan]]))
    assert collate(store, [0, 3], 0, packed=False).comparisons.tolist() == [[1, 2]]


def test_invalid_single_response_rows_name_file_line_and_field(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "p", "response": "a", "labels": [0.5]},
        {"prompt": "p", "response": "a", "rejected": "b"},
        {"prompt": "p", "response": "a", "labels": [0.5, "high"]},
    ])
    with pytest.raises(DataError) as info:
        build_store([source], tmp_path / "store", settings())
    message = str(info.value)
    assert f"{source}:2: field 'rejected': a row with 'response' (a single response) cannot also have" in message
    assert f"{source}:3: field 'labels[1]': expected a finite number or null" in message
    assert "mixed_shapes 1" in message and "bad_labels 1" in message


def test_settings_read_the_single_response_key_from_the_config():
    cfg = RMConfig()
    cfg.data.response_key = "answer"
    assert Settings.from_config(cfg.data, cfg.model.tokenizer).keys == RowKeys(response="answer")


def test_store_refuses_another_tokenizer_or_length_policy(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", rows())
    build_store([source], tmp_path / "store", settings())
    other = load_tokenizer(save_variant(tmp_path / "bos", bos=True))
    check_compatible(tmp_path / "store", settings(), FINGERPRINT)
    with pytest.raises(DataError, match="tokenizer: store"):
        check_compatible(tmp_path / "store", settings(), fingerprint(other))
    with pytest.raises(DataError, match="max_length: store 64, this run 32"):
        open_split(tmp_path / "store", tmp_path / "cache", settings(max_length=32), FINGERPRINT)


def test_cached_store_is_reused_until_the_data_changes(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", rows(10))
    cache = tmp_path / "cache"
    store, meta = open_split(source, cache, settings(), FINGERPRINT)
    assert len(store) == 10
    built = (cache / "meta.json").stat().st_mtime_ns
    open_split(source, cache, settings(), FINGERPRINT)
    assert (cache / "meta.json").stat().st_mtime_ns == built
    write_jsonl(source, rows(12))
    os.utime(source, ns=(built + 10**9, built + 10**9))
    store, _ = open_split(source, cache, settings(), FINGERPRINT)
    assert len(store) == 12
    assert len(open_split(source, cache, settings(max_length=48), FINGERPRINT)[0]) == 12  # settings change: rebuilt


@pytest.mark.slow
def test_preprocess_tool_round_trip(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", rows(40))
    out = tmp_path / "store"
    tool = str(REPO / "tools" / "preprocess_data.py")
    args = [PYTHON, tool, "--input", str(source), "--output", str(out), "--workers", "2", "data.max_length=64"]
    result = run_command(args)
    assert result.returncode == 0, result.stderr
    assert "40 rows" in result.stdout and "tokens/s" in result.stdout
    build_store([source], tmp_path / "direct", settings())
    assert same_store(out, tmp_path / "direct")
    # Training opens the store itself: nothing is re-tokenized into the cache folder.
    store, _ = open_split(out, tmp_path / "cache", settings(), FINGERPRINT)
    assert store.folder == out and not (tmp_path / "cache").exists()
    again = run_command(args)
    assert again.returncode == 2 and "not empty" in again.stderr
