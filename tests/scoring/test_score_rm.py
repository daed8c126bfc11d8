"""score_rm's job in process, on real files and a real tiny Llama: every row shape gets its
fields, equal to scoring the encoder's ids directly and to `transformers`; rows keep their
fields and order in JSON Lines and Parquet; one slow test runs the tool under torchrun."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_rm.convert import import_hf
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from tests.conftest import REPO, torchrun
from tests.convert.hf_models import save_model
from tests.scoring.score_rm_files import MEAN, STD, read_rows, run_job, save_scoring_model, score_rows, write_rows


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("score_rm") / "hf"
    reference = save_scoring_model(folder)
    return Scorer(load_model(folder)), reference, folder


def reference_rewards(reference, sequences):
    with torch.no_grad():
        return torch.stack([reference(torch.tensor([ids])).logits[0, 0] for ids in sequences])


def test_every_row_shape_gets_its_rewards(setup, tmp_path):
    scorer, reference, _ = setup
    ids = scorer.encoder.texts([("say", " something short")])[0].ids[:-1]
    rows = [{"id": "one", "prompt": "name a color", "response": " blue", "extra": [1, 2]},
            {"id": "pair", "prompt": "count to three", "chosen": " one two three", "rejected": " one two"},
            {"id": "list", "prompt": "a fruit", "responses": [" lime", " pear and an apple", " fig"]},
            {"id": "tie", "responses": [" kiwi", " kiwi"]},
            {"id": "chat", "messages": [user("hi"), bot("hello there")]},
            {"id": "chat pair", "chosen": [user("hi"), bot("hey")], "rejected": [user("hi"), bot("go away")]},
            {"id": "ids", "input_ids": ids}]
    summary, out = score_rows(scorer, rows, tmp_path)
    assert [row["id"] for row in out] == [row["id"] for row in rows]
    assert all(row.items() <= written.items() for row, written in zip(rows, out))
    assert all(written["truncated"] is False and "error" not in written for written in out)
    encoder = scorer.encoder
    texts = encoder.texts([("name a color", " blue"), ("count to three", " one two three"),
                           ("count to three", " one two"), ("a fruit", " lime"), ("a fruit", " pear and an apple"),
                           ("a fruit", " fig"), ("", " kiwi"), ((user("hi"),), (bot("hello there"),)),
                           ((user("hi"),), (bot("hey"),)), ((user("hi"),), (bot("go away"),))])
    sequences = [one.ids for one in texts] + [encoder.token_ids([ids])[0].ids]
    expected = scorer.score(sequences)[:, 0]
    got = [out[0]["reward"], out[1]["chosen_reward"], out[1]["rejected_reward"], *out[2]["rewards"],
           out[3]["rewards"][0], out[4]["reward"], out[5]["chosen_reward"], out[5]["rejected_reward"],
           out[6]["reward"]]
    torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got), reference_rewards(reference, sequences), rtol=0, atol=1e-4)
    assert out[2]["best"] == max(range(3), key=lambda i: out[2]["rewards"][i])
    # Ties: the first (equal texts in different places of a packed batch may differ in the last bits).
    assert out[3]["best"] == 0 and out[3]["rewards"][0] == pytest.approx(out[3]["rewards"][1], abs=1e-6)
    assert out[1]["chosen_reward_normalized"] == pytest.approx((out[1]["chosen_reward"] - MEAN) / STD)
    assert out[2]["rewards_normalized"] == pytest.approx([(r - MEAN) / STD for r in out[2]["rewards"]])
    assert out[6]["reward_normalized"] == pytest.approx((out[6]["reward"] - MEAN) / STD)
    assert summary.tokens == sum(map(len, sequences)) + len(texts[6].ids)  # " kiwi" twice
    assert summary.line().startswith("scored 7 rows, 0 invalid; ")


def test_without_stored_statistics_no_normalized_fields(setup, tmp_path):
    scorer, _, _ = setup
    plain = Scorer(dataclasses.replace(scorer.model, normalization=None))
    _, out = score_rows(plain, [{"prompt": "p", "responses": [" a", " b"]}], tmp_path)
    assert set(out[0]) == {"prompt", "responses", "rewards", "best", "truncated"}


def test_parquet_in_and_out_keeps_order_across_chunks(setup, tmp_path):
    scorer, _, _ = setup
    lengths = [3, 40, 1, 17, 60, 2, 25, 9, 33, 5, 48, 12]
    rows = [{"n": n, "prompt": "list words", "response": " word" * length} for n, length in enumerate(lengths)]
    rows[4] = {"n": 4, "prompt": "list words", "chosen": " a b c", "rejected": " word" * 70}
    _, whole = score_rows(scorer, rows, tmp_path, "in.jsonl", "whole.jsonl")
    _, chunked = score_rows(scorer, rows, tmp_path, "in.parquet", "out.parquet", chunk_rows=5)
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()
    assert [row["n"] for row in chunked] == list(range(len(rows)))
    for clean, parquet in zip(whole, chunked):
        assert {key: value for key, value in parquet.items() if value is not None}.keys() == clean.keys()
        for key in ("reward", "chosen_reward", "rejected_reward"):
            assert parquet[key] == pytest.approx(clean.get(key), abs=1e-6)


def test_skip_writes_error_rows_in_place_and_counts_them(setup, tmp_path):
    scorer, _, _ = setup
    rows = [{"prompt": "p", "response": " fine"},
            {"prompt": "p", "responses": [" a", " b", "  "]},
            {"input_ids": [5, -3]},
            {"prompt": "p", "response": " word" * 300},
            {"messages": [user("hi"), bot("yo")], "prompt": "again"},
            {"input_ids": [5, 6], "response": " text"},
            {"messages": "hi"}]
    path = write_rows(tmp_path / "in.jsonl", rows)
    with path.open("a") as file:
        file.write("{not json\n")
    summary, out = run_job(scorer, path, tmp_path / "out.jsonl", on_invalid="skip")
    assert [("error" in row) for row in out] == [False] + [True] * 7
    assert out[0]["reward"] is not None and all("reward" not in row for row in out[1:])
    assert out[1] == {**rows[1], "error": f"{path}:2: field 'responses[2]': empty response"}
    assert out[2]["error"].startswith(f"{path}:3: field 'input_ids': input_ids[1]=-3 is not a token id")
    assert out[3]["error"].startswith(f"{path}:4: field 'response': ") and "exceed the limit of 256" in out[3]["error"]
    assert out[4]["error"] == f"{path}:5: field 'prompt': a row with 'messages' cannot also have 'prompt'"
    assert out[5]["error"].startswith(f"{path}:6: field 'response': ")
    assert out[6]["error"] == f"{path}:7: field 'messages': expected a list of messages"
    assert out[7] == {"error": f"{path}:8: invalid JSON (Expecting property name enclosed in double quotes "
                               "at column 2)"}
    assert summary.done == 1 and summary.problems.counts == {"empty_response": 1, "bad_input_ids": 1,
                                                               "too_long": 1, "mixed_shapes": 2, "wrong_type": 1,
                                                               "invalid_json": 1}
    # Most frequent first; ties in training's order of reasons, then the encoder's by name.
    assert summary.line().startswith("scored 1 rows, 7 invalid (by reason: mixed_shapes 2, invalid_json 1, "
                                     "wrong_type 1, empty_response 1, bad_input_ids 1, too_long 1); ")



def test_truncate_prompt_flags_rows_and_keeps_the_whole_response(setup, tmp_path):
    scorer, reference, _ = setup
    cutting = Scorer(scorer.model, ScoreSettings(max_length=16, length_policy="truncate_prompt"))
    rows = [{"prompt": "tell me" + " more" * 30, "response": " fine then"},
            {"prompt": "long" * 20, "chosen": " a b", "rejected": " c"},
            {"prompt": "short", "response": " ok"}]
    summary, out = score_rows(cutting, rows, tmp_path)
    assert [row["truncated"] for row in out] == [True, True, False]
    ids = cutting.encoder.texts([(rows[0]["prompt"], rows[0]["response"])])[0].ids
    response = cutting.encoder.texts([("", " fine then")])[0].ids  # a Hugging Face model's: nothing appended
    assert len(ids) == 16 and ids[-len(response):] == response
    torch.testing.assert_close(torch.tensor(out[0]["reward"]), reference_rewards(reference, [ids])[0],
                               rtol=0, atol=1e-4)
    assert summary.done == 3


def test_several_labels_give_lists_and_the_first_label_picks_the_best(tmp_path, single_rank):
    save_model("llama", tmp_path / "hf", num_labels=2, seed=3)
    scorer = Scorer(load_model(tmp_path / "hf"))
    rows = [{"prompt": "p", "response": " one"}, {"prompt": "p", "responses": [" a", " b c", " d"]}]
    _, out = score_rows(scorer, rows, tmp_path)
    sequences = [one.ids for one in scorer.encoder.texts([("p", " one"), ("p", " a"), ("p", " b c"), ("p", " d")])]
    expected = scorer.score(sequences)
    torch.testing.assert_close(torch.tensor([out[0]["reward"], *out[1]["rewards"]]), expected, rtol=0, atol=1e-6)
    assert out[1]["best"] == int(expected[1:, 0].argmax())


@pytest.mark.slow
def test_torchrun_tp2_on_a_converted_checkpoint_equals_one_process(setup, tmp_path):
    scorer, _, folder = setup
    rows = [{"prompt": "count", "response": " one two" * n} for n in range(1, 9)]
    rows += [{"prompt": "pick", "chosen": " red", "rejected": " blue green"},
             {"prompt": "pick", "responses": [" a", " b c", " d e f"]},
             {"messages": [user("hi"), bot("hello there")]}]
    _, single = score_rows(scorer, rows, tmp_path, target="single.jsonl")
    checkpoint = import_hf(folder, tmp_path / "checkpoint")
    output = tmp_path / "tp2.parquet"
    result = torchrun(2, REPO / "tools" / "score_rm.py", "--model", str(checkpoint), "--tp", "2",
                      "--input", str(tmp_path / "in.jsonl"), "--output", str(output), "--chunk-rows", "4")
    assert result.stdout.strip().startswith(f"scored {len(rows)} rows, 0 invalid; ")
    parallel = read_rows(output)
    assert [row["prompt"] for row in parallel] == [row.get("prompt") for row in single]

    def rewards(out):
        keys = ("reward", "chosen_reward", "rejected_reward", "rewards")
        return torch.tensor([value for row in out for key in keys if row.get(key) is not None
                             for value in (row[key] if key == "rewards" else [row[key]])])

    torch.testing.assert_close(rewards(parallel), rewards(single), rtol=1e-5, atol=1e-7)
