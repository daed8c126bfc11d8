"""generate's job in process on a real Hugging Face causal LM, converted in memory: greedy
decoding equals transformers' `generate`, rows keep their fields and order, bad rows and
over-long prompts follow their policies, and a resumed run writes what one run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_rm.data.tokenize import encode_prompts
from megatron_rm.errors import DataError
from megatron_rm.generation.batch_job import GenerateTask, generate_file
from megatron_rm.generation.generator import EOS, LENGTH
from megatron_rm.generation.prompts import end_token_ids
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.loading.models import load_policy
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant

PROMPTS = ["User: Write a numbered list of 3 colors.\nAssistant:", "Give me 2 sports.",
           "User: Name a fruit.\nAssistant: 1.", "a"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("generate") / "hf"
    reference = save_model("mistral", folder, kind="causal_lm", seed=11)
    save_variant(folder, chat=True)
    return load_policy(folder), reference


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_equals_transformers_generate_for_mixed_lengths(setup):
    policy, reference = setup
    tokenizer = policy.tokenizer
    prompts = encode_prompts(tokenizer, PROMPTS)
    task = GenerateTask(policy, SamplingParams(max_new_tokens=12, temperature=0), batch_size=8)
    ours = task.run(prompts, list(range(len(prompts))))
    longest = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    for row, (completion,) in enumerate(ours):
        theirs = expected[row, longest:].tolist()
        if tokenizer.eos_token_id in theirs:  # transformers pads a finished row after its EOS
            theirs = theirs[:theirs.index(tokenizer.eos_token_id) + 1]
        assert completion.token_ids == theirs
        assert completion.finish_reason == (EOS if theirs[-1] == tokenizer.eos_token_id else LENGTH)


def test_rows_keep_fields_and_order_and_bad_rows_are_written_and_counted(setup, tmp_path):
    policy, _ = setup
    rows = [{"id": 0, "prompt": PROMPTS[0], "keep": [1, 2]},
            {"id": 1, "messages": [{"role": "user", "content": "hi"}]},
            {"id": 2, "response": "no prompt here"},
            {"id": 3, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"id": 4, "prompt": [{"role": "user", "content": "a list of 2 fruits"}]},
            {"id": 5, "prompt": "  "}]
    write(tmp_path / "in.jsonl", rows)
    task = GenerateTask(policy, SamplingParams(max_new_tokens=6, temperature=0.9, top_k=20), num_samples=3, seed=4)
    with pytest.raises(DataError, match=r"in.jsonl:3: field 'prompt': missing"):
        generate_file(task, tmp_path / "in.jsonl", tmp_path / "stopped.jsonl", progress=False)
    summary = generate_file(task, tmp_path / "in.jsonl", tmp_path / "out.jsonl", on_invalid="skip", progress=False)
    out = read(tmp_path / "out.jsonl")
    assert [row["id"] for row in out] == [row["id"] for row in rows]
    assert summary.done == 3 and summary.problems.counts == {"missing_field": 1, "bad_messages": 1,
                                                             "empty_response": 1}
    assert out[3]["error"].endswith("field 'messages[1].role': the final message is the assistant's: a prompt "
                                    "ends with the turn to answer")
    for written, row in zip(out, rows):
        assert row.items() <= written.items()
        if "error" in written:
            continue
        assert len(written["responses"]) == len(written["response_ids"]) == len(written["logprobs"]) == 3
        for text, ids, logprobs, reason in zip(written["responses"], written["response_ids"], written["logprobs"],
                                               written["finish_reasons"]):
            assert len(logprobs) == len(ids) <= 6 and all(value <= 0 for value in logprobs)
            assert text == policy.tokenizer.decode(ids[:-1] if reason == EOS else ids)
        assert written["prompt_truncated"] is False
    # A message-list prompt renders as the same conversation given as `messages`.
    chat = encode_prompts(policy.tokenizer, [({"role": "user", "content": "a list of 2 fruits"},)])[0]
    assert chat[-3:] == policy.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:]


def test_over_long_prompts_are_refused_or_cut_and_counted(setup, tmp_path):
    policy, _ = setup
    room = policy.config.max_sequence_length - 4
    long_prompt = " ".join(["word"] * (room + 10))
    write(tmp_path / "in.jsonl", [{"prompt": long_prompt}, {"prompt": "short"}])
    params = SamplingParams(max_new_tokens=4, temperature=0)
    refused = GenerateTask(policy, params)
    generate_file(refused, tmp_path / "in.jsonl", tmp_path / "refused.jsonl", on_invalid="skip", progress=False)
    first = read(tmp_path / "refused.jsonl")[0]
    assert "exceed the model's max_sequence_length" in first["error"] and "truncate_prompt" in first["error"]
    cut = GenerateTask(policy, params, prompt_policy="truncate_prompt")
    generate_file(cut, tmp_path / "in.jsonl", tmp_path / "cut.jsonl", progress=False)
    out = read(tmp_path / "cut.jsonl")
    assert cut.truncated == 1 and out[0]["prompt_truncated"] is True and out[1]["prompt_truncated"] is False
    kept = encode_prompts(policy.tokenizer, [long_prompt])[0][-room:]
    alone = cut.run([kept], [0])[0][0]
    assert out[0]["response_ids"][0] == alone.token_ids  # the prompt's newest `room` tokens were kept


def test_a_resumed_run_writes_what_one_run_writes(setup, tmp_path):
    policy, _ = setup
    write(tmp_path / "in.jsonl", [{"prompt": prompt, "n": n} for n, prompt in enumerate(PROMPTS * 2)])
    task = GenerateTask(policy, SamplingParams(max_new_tokens=5, temperature=1.0, top_p=0.9), num_samples=2, seed=9)
    generate_file(task, tmp_path / "in.jsonl", tmp_path / "whole.jsonl", chunk_rows=3, progress=False)
    whole = (tmp_path / "whole.jsonl").read_text()
    lines = whole.splitlines(keepends=True)
    (tmp_path / "resumed.jsonl").write_text("".join(lines[:3]) + lines[3][:10])  # a torn chunk
    summary = generate_file(task, tmp_path / "in.jsonl", tmp_path / "resumed.jsonl", chunk_rows=3, progress=False)
    assert summary.skipped == 3 and summary.done == len(PROMPTS * 2) - 3
    assert (tmp_path / "resumed.jsonl").read_text() == whole


def test_a_folders_generation_config_names_more_end_tokens(setup, tmp_path):
    policy, _ = setup
    prompt = encode_prompts(policy.tokenizer, [PROMPTS[0]])
    free = GenerateTask(policy, SamplingParams(max_new_tokens=8, temperature=0)).run(prompt, [0])[0][0]
    end = free.token_ids[2]
    path = Path(policy.name) / "generation_config.json"  # transformers' save_pretrained wrote one
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "eos_token_id": [policy.tokenizer.eos_token_id, end]}))
    try:
        assert end_token_ids(policy.tokenizer, policy.name) == (policy.tokenizer.eos_token_id, end)
        stopped = GenerateTask(policy, SamplingParams(max_new_tokens=8, temperature=0)).run(prompt, [0])[0][0]
    finally:
        path.write_text(json.dumps(saved))
    first = free.token_ids.index(end)
    assert stopped.token_ids == free.token_ids[:first + 1] and stopped.finish_reason == EOS
