"""The advantage estimators through `experience`, as a run calls them: each against a plain
reference (group statistics, the global whitening of REINFORCE++), the same at any micro-batch
split, where the KL enters, missing rewards, DAPO's overlong shaping, and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rm.data import document_batch
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.estimators import ADVANTAGE_ESTIMATORS, AdvantageSettings
from megatron_rm.ppo.experience import Scored, Shaping, experience, shaped_scores
from megatron_rm.ppo.groups import group_advantages

GROUPS = [0, 0, 0, 0, 1, 1, 1, 1]
SCORES = [1.0, 0.0, 0.0, 0.5, 2.0, 2.0, 1.0, math.nan]


def _parts(sizes: list[int], *, critic: bool = False, kl: float = 0.0) -> list[Scored]:
    """The 8 responses (prompt 2 tokens, response 1 to 4 tokens) split into micro-batches of `sizes`;
    old log-probabilities -1, the reference's -1 - kl on every token."""
    generator = torch.Generator().manual_seed(3)
    documents = [[1, 2] + [3] * (1 + i % 4) for i in range(8)]
    parts, start = [], 0
    for size in sizes:
        rows = list(range(start, start + size))
        batch = document_batch([documents[i] for i in rows], 0, prompt_lengths=[2] * size)
        width = batch.input_ids.shape[1]
        old = torch.full((size, width), -1.0)
        values = torch.randn(size, width, generator=generator) if critic else None
        parts.append(Scored(batch, old, old - kl, values, torch.tensor([SCORES[i] for i in rows]),
                            torch.ones(size, dtype=torch.bool), torch.tensor([GROUPS[i] for i in rows])))
        start += size
    return parts


def _per_response(rollouts) -> list[float]:
    """Each response's advantage (one value on its every action token)."""
    out = []
    for r in rollouts:
        _, mask = next_token_targets(r.batch)
        for row, valid in zip(r.advantages, mask):
            values = row[valid]
            assert torch.all(values == values[0])  # the same on every token
            out.append(float(values[0]))
    return out


@pytest.mark.parametrize("advantage, scale", [("grpo", "std"), ("grpo", "none"), ("rloo", "std")])
def test_group_estimators_give_each_response_its_groups_advantage_at_any_split(advantage, scale):
    settings = AdvantageSettings(group_scale=scale)
    expected = group_advantages(torch.tensor(SCORES), torch.tensor(GROUPS), advantage, scale=scale).tolist()
    for sizes in ([8], [3, 5], [1] * 8):
        result = experience(_parts(sizes), settings, advantage=advantage)
        assert _per_response(result.rollouts) == pytest.approx(expected, abs=1e-6)
        assert all(r.returns is None and r.old_values is None for r in result.rollouts)
    # The missing reward (NaN) gets 0 and is out of its group's statistics: the group is [2, 2, 1].
    three = group_advantages(torch.tensor([2.0, 2.0, 1.0]), torch.zeros(3), advantage, scale=scale).tolist()
    assert expected[4:] == pytest.approx([*three, 0.0])


def test_a_kl_in_the_reward_is_summed_into_each_score_first():
    kl_coef, kl = 0.5, 0.2  # k1 = 0.2 on every action token
    result = experience(_parts([8], kl=kl), AdvantageSettings(kl_coef=kl_coef, group_scale="none"), advantage="grpo")
    lengths = [1 + i % 4 for i in range(8)]
    shaped = [score - kl_coef * kl * length for score, length in zip(SCORES, lengths)]
    expected = group_advantages(torch.tensor(shaped), torch.tensor(GROUPS), "grpo", scale="none")
    assert _per_response(result.rollouts) == pytest.approx(expected.tolist(), abs=1e-6)
    assert result.kl.tolist() == pytest.approx([kl] * 8)


def test_reinforce_pp_whitens_the_tiled_scores_over_the_step():
    """With no KL and gamma 1 each token's return is its response's score; the advantages are the
    returns standardised over every action token (population variance)."""
    scores = torch.tensor(SCORES).nan_to_num(0.0)
    lengths = torch.tensor([1 + i % 4 for i in range(8)])
    tokens = scores.repeat_interleave(lengths).double()
    expected = ((scores.double() - tokens.mean()) / (tokens.var(unbiased=False) + 1e-8).sqrt()).tolist()
    for sizes in ([8], [2, 6]):
        result = experience(_parts(sizes), AdvantageSettings(), advantage="reinforce_pp")
        assert _per_response(result.rollouts) == pytest.approx(expected, abs=1e-5)
    # The response without a reward counts as 0 and is left out of the policy loss.
    assert result.rollouts[-1].policy_rows.tolist()[-1] is False


def test_reinforce_pp_baseline_subtracts_the_group_mean_before_whitening():
    centred = group_advantages(torch.tensor(SCORES), torch.tensor(GROUPS), "grpo", scale="none").float()
    lengths = torch.tensor([1 + i % 4 for i in range(8)])
    tokens = centred.repeat_interleave(lengths).double()
    expected = ((centred.double() - tokens.mean()) / (tokens.var(unbiased=False) + 1e-8).sqrt()).tolist()
    result = experience(_parts([4, 4]), AdvantageSettings(), advantage="reinforce_pp_baseline")
    assert _per_response(result.rollouts) == pytest.approx(expected, abs=1e-5)


def test_gae_keeps_its_critic_and_returns():
    result = experience(_parts([8], critic=True), AdvantageSettings(), advantage="gae")
    assert all(r.returns is not None for r in result.rollouts)
    assert ADVANTAGE_ESTIMATORS["gae"].needs_critic
    assert not any(spec.needs_critic for name, spec in ADVANTAGE_ESTIMATORS.items() if name != "gae")


def test_kl_in_the_loss_carries_the_reference_and_none_carries_nothing():
    parts = _parts([8], kl=0.1)
    in_loss = experience(parts, AdvantageSettings(), advantage="grpo", kl_in_loss=True)
    assert torch.equal(in_loss.rollouts[0].ref_logprobs, parts[0].ref_logprobs)
    no_reference = [Scored(p.batch, p.old_logprobs, None, None, p.scores, p.learn_policy, p.groups) for p in parts]
    result = experience(no_reference, AdvantageSettings(), advantage="grpo")
    assert result.kl is None and result.rollouts[0].ref_logprobs is None


def test_overlong_shaping_follows_dapo():
    """L_max 20, buffer 4, penalty 1: 16 tokens cost nothing, 18 cost 0.5, 20 cost 1 (verl's dapo manager)."""
    shaping = Shaping(max_new_tokens=20, overlong_buffer=4, overlong_penalty=1.0)
    scores, _ = shaped_scores(torch.zeros(4), torch.ones(4, dtype=torch.bool), shaping, torch.tensor([10, 16, 18, 20]))
    assert scores.tolist() == [0.0, 0.0, -0.5, -1.0]
