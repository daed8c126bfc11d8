"""Choosing the next token: top-k / top-p as transformers' warpers cut, greedy, the reported
log-probability, and per-row generators that make a row's draws independent of its batch."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from megatron_rm.generation.sampling import SamplingParams, choose, filtered, row_generator


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (5, 1.0), (0, 0.9), (7, 0.8), (1, 0.5), (0, 0.05)])
def test_filtering_keeps_what_transformers_keeps(top_k, top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(top_k)) * 3
    expected = logits.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = filtered(logits, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert torch.equal(ours[~torch.isinf(ours)], logits[~torch.isinf(expected)])
    assert bool((~torch.isinf(ours)).any(-1).all())  # every row keeps at least one token


def test_greedy_takes_the_argmax_and_reports_the_temperature_one_logprob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.5]])
    tokens, logprobs = choose(logits, SamplingParams(temperature=0), [])
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logprobs, logits.log_softmax(-1)[[0, 1], [1, 0]])


def test_sampled_logprob_is_of_the_whole_tempered_distribution_not_the_truncated_one():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.7, top_k=3)
    tokens, logprobs = choose(logits, params, [row_generator(0, row, torch.device("cpu")) for row in range(4)])
    allowed = logits.topk(3, -1).indices
    assert all(int(token) in allowed[row].tolist() for row, token in enumerate(tokens))
    torch.testing.assert_close(logprobs, (logits / 0.7).log_softmax(-1).gather(-1, tokens[:, None])[:, 0])


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    generator = row_generator(3, 0, torch.device("cpu"))
    draws = [int(choose(probs.log()[None], SamplingParams(), [generator])[0]) for _ in range(3000)]
    frequencies = torch.bincount(torch.tensor(draws), minlength=3) / len(draws)
    torch.testing.assert_close(frequencies, probs, atol=0.03, rtol=0)


def test_a_rows_draws_depend_on_its_seed_and_index_only():
    logits = torch.zeros(3, 1000)
    params = SamplingParams()

    def draws(seed, rows):
        generators = [row_generator(seed, row, torch.device("cpu")) for row in rows]
        return choose(logits[:len(rows)], params, generators)[0].tolist()

    together = draws(5, [0, 1, 2])
    assert [draws(5, [row])[0] for row in (0, 1, 2)] == together
    assert draws(6, [0, 1, 2]) != together
    assert len(set(together)) == 3


def test_bad_settings_are_named():
    problems = SamplingParams(max_new_tokens=0, temperature=-1, top_k=-2, top_p=0).problems()
    assert [problem.split("=")[0] for problem in problems] == ["max_new_tokens", "temperature", "top_k", "top_p"]
