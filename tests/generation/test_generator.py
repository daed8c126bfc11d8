"""Generation in one process with a random tiny policy: megatron's KV cache gives what full
recomputation gives, the returned log-probabilities are the teacher-forced ones, a row samples
the same alone or in a batch, and responses stop where they should."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.attention import SelfAttention

from megatron_rm.config import ParallelConfig
from megatron_rm.data import document_batch
from megatron_rm.generation.generator import EOS, LENGTH, Generator
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.model import build_policy_model, layer_spec
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.self_attention import RotatedCacheSelfAttention
from megatron_rm.model.vocab_parallel import token_logprobs
from tests.conftest import tiny_model_config

VOCAB = 300
PROMPTS = [[1, 5, 7, 9, 11], [1, 3, 4], [1, 8, 8, 8, 8, 8, 8, 8, 9], [1]]


@pytest.fixture(scope="module")
def policy(single_rank):
    torch.manual_seed(0)
    model = build_policy_model(tiny_model_config(), ParallelConfig(), VOCAB).eval()
    return model, single_rank


def generator(policy, eos=(2,)) -> Generator:
    model, layout = policy
    return Generator([model], layout, vocab_size=VOCAB, max_sequence_length=model.max_sequence_length,
                     eos_token_ids=eos)


def teacher_forced(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    batch = document_batch([prompt + response], 0)
    logprobs = token_logprobs(forward_logits(model, batch), torch.roll(batch.input_ids, -1, 1), VOCAB, temperature)
    return logprobs[0, len(prompt) - 1:-1]


def test_kv_cached_greedy_equals_full_recomputation(policy):
    model, _ = policy
    completions = generator(policy).generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0),
                                             [(0, row) for row in range(len(PROMPTS))])
    for prompt, completion in zip(PROMPTS, completions):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(10):  # no cache: the whole sequence every step
                ids.append(int(forward_logits(model, document_batch([ids], 0))[0, -1, :VOCAB].argmax()))
        assert completion.token_ids == ids[len(prompt):]
        assert completion.finish_reason == LENGTH


def test_the_rotated_key_cache_gives_megatrons_numbers_bit_for_bit(policy, monkeypatch):
    # megatron's own SelfAttention rotates the whole cache at every step; ours rotates each key once.
    model, layout = policy
    monkeypatch.setattr(layer_spec, "RotatedCacheSelfAttention", SelfAttention)
    stock = build_policy_model(tiny_model_config(), ParallelConfig(), VOCAB).eval()
    stock.load_state_dict(model.state_dict())
    assert {type(layer.self_attention) for layer in stock.decoder.layers} == {SelfAttention}
    assert {type(layer.self_attention) for layer in model.decoder.layers} == {RotatedCacheSelfAttention}
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    seeds = [(5, row) for row in range(len(PROMPTS))]
    ours = generator(policy).generate(PROMPTS, params, seeds)
    megatrons = generator((stock, layout)).generate(PROMPTS, params, seeds)
    assert [c.token_ids for c in ours] == [c.token_ids for c in megatrons]
    assert [c.logprobs for c in ours] == [c.logprobs for c in megatrons]


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=8, temperature=0),
                                    SamplingParams(max_new_tokens=8, temperature=0.7, top_k=40, top_p=0.9),
                                    SamplingParams(max_new_tokens=8, temperature=1.3)])
def test_returned_logprobs_equal_a_teacher_forced_forward(policy, params):
    model, _ = policy
    completions = generator(policy).generate(PROMPTS, params, [(3, row) for row in range(len(PROMPTS))])
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, completions):
            expected = teacher_forced(model, prompt, completion.token_ids, params.logprob_temperature)
            torch.testing.assert_close(torch.tensor(completion.logprobs), expected, rtol=0, atol=1e-5)


def test_a_row_samples_the_same_alone_or_in_any_batch(policy):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95)
    together = generator(policy).generate(PROMPTS, params, [(7, row) for row in range(len(PROMPTS))])
    for row in (0, 2, 3):
        alone = generator(policy).generate([PROMPTS[row]], params, [(7, row)])[0]
        assert alone.token_ids == together[row].token_ids
    again = generator(policy).generate(PROMPTS, params, [(7, row) for row in range(len(PROMPTS))])
    assert [c.token_ids for c in again] == [c.token_ids for c in together]
    other_seed = generator(policy).generate(PROMPTS, params, [(8, row) for row in range(len(PROMPTS))])
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in together]


def test_rows_of_one_prompt_share_its_prefill_and_sample_as_they_would_alone(policy, monkeypatch):
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2]]  # a group per prompt
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95)
    forward_rows = []
    forward = Generator._forward

    def counted(self, step, context):
        forward_rows.append(step.input_ids.shape[0])
        return forward(self, step, context)
    monkeypatch.setattr(Generator, "_forward", counted)
    together = generator(policy).generate(prompts, params, [(7, row) for row in range(len(prompts))])
    assert forward_rows[0] == 3 and set(forward_rows[1:]) == {6}  # one prefill per distinct prompt
    for row, prompt in enumerate(prompts):
        alone = generator(policy).generate([prompt], params, [(7, row)])[0]
        assert alone.token_ids == together[row].token_ids
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(together[row].logprobs),
                                   rtol=0, atol=1e-5)


def test_responses_stop_at_eos_or_a_stop_token_and_keep_it(policy):
    params = SamplingParams(max_new_tokens=10, temperature=0)
    free = generator(policy).generate(PROMPTS, params, [(0, row) for row in range(len(PROMPTS))])
    stop_at = free[0].token_ids[3]  # make row 0's fourth token the end of its response
    first = next(i for i, token in enumerate(free[0].token_ids) if token == stop_at)
    for stopping in (generator(policy, eos=(stop_at,)), generator(policy, eos=())):
        run_params = params if stopping.eos_token_ids else SamplingParams(max_new_tokens=10, temperature=0,
                                                                          stop_token_ids=(stop_at,))
        completions = stopping.generate(PROMPTS, run_params, [(0, row) for row in range(len(PROMPTS))])
        assert completions[0].token_ids == free[0].token_ids[:first + 1]
        assert completions[0].finish_reason == EOS and len(completions[0].logprobs) == first + 1
        for free_one, stopped in zip(free[1:], completions[1:]):  # the others stop at their own first stop_at
            end = free_one.token_ids.index(stop_at) + 1 if stop_at in free_one.token_ids else 10
            assert stopped.token_ids == free_one.token_ids[:end]
            assert stopped.finish_reason == (EOS if stop_at in free_one.token_ids else LENGTH)
