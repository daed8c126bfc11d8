"""From completions to the update's inputs: documents and their action positions, the no-EOS
policies, and KL-penalised returns and whitened advantages on a hand-checked example."""

from __future__ import annotations

import pytest
import torch

from megatron_rm.generation.generator import EOS, LENGTH, Completion
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.estimators import AdvantageSettings
from megatron_rm.ppo.experience import Scored, Shaping, documents, experience, shaped_scores

PROMPTS = [[5, 6, 7], [8, 9]]
COMPLETIONS = [Completion([11, 12, 2], [-0.5, -1.0, -0.2], EOS), Completion([13, 14, 15, 16], [-1.0] * 4, LENGTH)]


def test_documents_mark_each_response_and_whether_it_ended():
    batch, ended = documents(PROMPTS, COMPLETIONS, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 11, 12, 2], [8, 9, 13, 14, 15, 16]]
    assert ended.tolist() == [True, False]
    _, actions = next_token_targets(batch)  # position t is the action that produced token t + 1
    assert actions.tolist() == [[False, False, True, True, True, False], [False, True, True, True, True, False]]


def test_no_eos_policies_and_clipping():
    scores, ended = torch.tensor([3.0, -4.0, 0.5]), torch.tensor([True, False, False])
    masked, learn = shaped_scores(scores, ended, Shaping(clip=2.0))
    assert masked.tolist() == [2.0, -2.0, 0.5] and learn.tolist() == [True, False, False]
    penalised, learn = shaped_scores(scores, ended, Shaping(no_eos="penalty", no_eos_penalty=-1.5))
    assert penalised.tolist() == [3.0, -1.5, -1.5] and learn.tolist() == [True, True, True]


def test_returns_carry_the_score_and_the_kl_penalty_and_advantages_are_whitened():
    batch, ended = documents(PROMPTS, COMPLETIONS, pad_id=0)
    _, actions = next_token_targets(batch)
    old = torch.zeros(2, 6)
    old[actions] = torch.tensor([-0.5, -1.0, -0.2, -1.0, -1.0, -1.0, -1.0])
    ref = old - 0.1  # k1 = 0.1 nats on every action token
    scores, learn = shaped_scores(torch.tensor([2.0, 1.0]), ended, Shaping())
    result = experience([Scored(batch, old, ref, torch.zeros(2, 6), scores, learn)],
                        AdvantageSettings(kl_coef=0.5, lam=1.0))
    (rollouts,) = result.rollouts
    # Row 0: -0.05 on each of its 3 actions, +2 on the last: returns to go 1.85, 1.9, 1.95 (values 0).
    assert rollouts.returns[0, 2:5].tolist() == pytest.approx([1.85, 1.9, 1.95])
    assert rollouts.returns[1, 1:5].tolist() == pytest.approx([0.8, 0.85, 0.9, 0.95])
    assert float(rollouts.returns[~actions].abs().sum()) == 0.0
    kept = rollouts.advantages[actions]
    assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6) and float(kept.std(unbiased=False)) == \
        pytest.approx(1.0, rel=1e-4)
    assert result.kl.tolist() == pytest.approx([0.1, 0.1])
    assert rollouts.policy_rows.tolist() == [True, False]


def test_micro_batches_are_whitened_together():
    batch, ended = documents(PROMPTS, COMPLETIONS, pad_id=0)
    generator = torch.Generator().manual_seed(0)
    old, values = -torch.rand(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    ref = old - 0.2 * torch.rand(2, 6, generator=generator)
    scores, learn = torch.tensor([1.0, -0.5]), torch.tensor([True, True])
    settings = {"settings": AdvantageSettings(kl_coef=0.1, lam=0.95), "kl_estimator": "k3"}
    together = experience([Scored(batch, old, ref, values, scores, learn)], **settings)
    parts = []
    for row in (0, 1):
        part, _ = documents(PROMPTS[row:row + 1], COMPLETIONS[row:row + 1], pad_id=0)
        width = part.input_ids.shape[1]
        parts.append(Scored(part, old[row:row + 1, :width], ref[row:row + 1, :width], values[row:row + 1, :width],
                            scores[row:row + 1], learn[row:row + 1]))
    split = experience(parts, **settings)
    for row, rollouts in enumerate(split.rollouts):
        width = rollouts.batch.input_ids.shape[1]
        torch.testing.assert_close(rollouts.advantages[0], together.rollouts[0].advantages[row, :width])
        torch.testing.assert_close(rollouts.returns[0], together.rollouts[0].returns[row, :width])
    torch.testing.assert_close(split.kl, together.kl)
