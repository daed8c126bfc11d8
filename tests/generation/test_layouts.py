"""The policy at TP2, PP2, DP2 and TP2xPP2 (one real torchrun job over gloo) against one
process: vocabulary-parallel log-probabilities, entropies and gradients equal a float64
full softmax within 1e-5, padding columns get no gradient, and seeded sampling gives the
same responses at every layout; `tools/generate.py` writes what the library writes."""

from __future__ import annotations

import json

import pytest

from megatron_rm.generation.batch_job import GenerateTask, generate_file
from megatron_rm.loading.models import load_policy
from tests.conftest import PYTHON, REPO, run_command, torchrun
from tests.convert.hf_models import save_model
from tests.generation.policy_worker import SAMPLING, logprob_differences

PROMPTS = ["User: Write a numbered list of 3 colors.\nAssistant:", "Give me 2 sports.", "a", "User: Hi",
           "Tell me a story about a fox and a crow.", "1. 2. 3."]


@pytest.mark.slow
def test_layouts_agree_with_one_process(tmp_path, single_rank):
    hf = tmp_path / "hf"
    save_model("qwen2", hf, kind="causal_lm", seed=21)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text, "n": n}) + "\n" for n, text in enumerate(PROMPTS)))
    out = tmp_path / "out"
    out.mkdir()
    torchrun(4, REPO / "tests" / "generation" / "policy_worker.py", "--hf", str(hf), "--prompts", str(prompts),
             "--out", str(out), "--layout", "2", "1", "--layout", "1", "2", "--layout", "2", "2")

    policy = load_policy(hf)
    differences = {"tp1pp1": logprob_differences(policy)}
    differences["tp2pp1"] = json.loads((out / "tp2pp1.json").read_text())
    for layout, found in differences.items():
        assert max(found["logprobs"], found["entropy"], found["grad"]) < 1e-5, (layout, found)
        assert found["padding_grad"] == 0.0, layout

    task = GenerateTask(policy, SAMPLING, num_samples=2, seed=3, batch_size=3)
    generate_file(task, prompts, tmp_path / "one.jsonl", chunk_rows=4, progress=False)
    expected = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len({tuple(ids) for row in expected for ids in row["response_ids"]}) > len(PROMPTS)  # samples differ
    for layout in ("tp2pp1", "tp1pp2", "tp2pp2"):
        found = [json.loads(line) for line in (out / f"{layout}.jsonl").read_text().splitlines()]
        assert [row["response_ids"] for row in found] == [row["response_ids"] for row in expected], layout
        for row, reference in zip(found, expected):
            for ours, theirs in zip(row["logprobs"], reference["logprobs"]):
                assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5, layout

    result = run_command([PYTHON, str(REPO / "tools" / "generate.py"), "--model", str(hf), "--input", str(prompts),
                          "--output", str(tmp_path / "tool.jsonl"), "--num-samples", "2", "--seed", "3",
                          "--max-new-tokens", str(SAMPLING.max_new_tokens), "--temperature", "1.0", "--top-p", "0.9",
                          "--batch-size", "3", "--chunk-rows", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "tool.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert "generated for 6 rows, 0 invalid" in result.stdout
