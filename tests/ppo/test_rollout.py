"""The rollout forwards on real tiny models: old log-probabilities equal the generator's, the
reference equals the actor before any update (KL exactly 0), values and scores are the critic's
and the reward model's own, and the first update on these rollouts has ratio exactly 1."""

from __future__ import annotations

import torch

from megatron_rm.config import OptimizerConfig, ParallelConfig
from megatron_rm.core.optim import build_optimizer, train_step
from megatron_rm.generation.generator import Generator
from megatron_rm.generation.sampling import SamplingParams
from megatron_rm.model import build_policy_model, build_reward_model
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.estimators import AdvantageSettings
from megatron_rm.ppo.experience import Shaping, documents, experience
from megatron_rm.ppo.forwards import RolloutModels, model_scores, rollout_forwards
from megatron_rm.ppo.objectives import ActorObjective
from megatron_rm.ppo.reference import CpuReference
from tests.conftest import tiny_model_config

VOCAB, TEMPERATURE = 300, 0.9
PROMPTS = [[1, 5, 9], [7, 3], [2, 2, 2, 4, 6], [8]]


def test_rollout_forwards_and_the_first_update(single_rank):
    torch.manual_seed(4)
    config = tiny_model_config()
    actor, optimizer, scheduler = build_optimizer(build_policy_model(config, ParallelConfig(), VOCAB),
                                                  OptimizerConfig(lr=0.0, lr_decay_style="constant"), 4)
    critic = build_reward_model(config, ParallelConfig(), VOCAB).eval()
    reward = build_reward_model(config, ParallelConfig(), VOCAB).eval()
    models = RolloutModels([actor], [critic], CpuReference(actor.module), single_rank, VOCAB, TEMPERATURE)
    generator = Generator([actor.module.eval()], single_rank, vocab_size=VOCAB,
                          max_sequence_length=config.max_sequence_length, eos_token_ids=(2,))
    completions = generator.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=TEMPERATURE),
                                     [(0, row) for row in range(len(PROMPTS))])
    halves = [documents(PROMPTS[:2], completions[:2], 0), documents(PROMPTS[2:], completions[2:], 0)]
    batches, ended_rows = [batch for batch, _ in halves], [ended for _, ended in halves]
    rewards = model_scores([reward], batches, single_rank)
    # With no_eos=penalty every response trains the policy (few random responses end with EOS).
    parts = rollout_forwards(models, batches, ended_rows, rewards, Shaping(no_eos="penalty"))
    kept = rollout_forwards(models, batches, ended_rows, rewards, Shaping())
    for part, unshaped, first in zip(parts, kept, (0, 2)):
        _, actions = next_token_targets(part.batch)
        for row in range(part.batch.input_ids.shape[0]):
            sampled = torch.tensor(completions[first + row].logprobs)
            torch.testing.assert_close(part.old_logprobs[row][actions[row]], sampled, rtol=0, atol=1e-5)
        assert torch.equal(part.ref_logprobs, part.old_logprobs)  # the reference is the untouched actor
        with torch.no_grad():
            torch.testing.assert_close(part.values, forward_documents(critic, part.batch, token_values=True)[..., 0])
            raw = forward_documents(reward, part.batch)[:, 0]
        torch.testing.assert_close(unshaped.scores, raw)  # no_eos=mask keeps the reward model's score
        ended = torch.tensor([c.finish_reason == "eos" for c in completions[first:first + len(raw)]])
        torch.testing.assert_close(part.scores, torch.where(ended, raw, torch.full_like(raw, -1.0)))
        assert torch.equal(unshaped.learn_policy, ended)

    result = experience(parts, AdvantageSettings(kl_coef=0.1, lam=0.95))
    assert result.kl.abs().max() == 0
    objective = ActorObjective(VOCAB, TEMPERATURE)
    actor.train()
    sums = train_step(actor, optimizer, scheduler, objective, result.rollouts, 1.0, single_rank).sums
    summary = objective.summarize(sums)
    assert summary["clipped"] == 0.0 and summary["approx_kl"] == 0.0 and summary["tokens"] > 0
