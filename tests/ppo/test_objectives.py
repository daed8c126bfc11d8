"""The actor's and critic's PPO losses through megatron's schedule and optimizer step: equal to
a plain float64 reference, independent of how the batch is split into micro-batches, and the
first update's ratio is exactly 1 when the old log-probabilities come from the same forward."""

from __future__ import annotations

import pytest
import torch

from megatron_rm.config import OptimizerConfig, ParallelConfig
from megatron_rm.core.optim import build_optimizer, train_step
from megatron_rm.data import document_batch
from megatron_rm.model import build_policy_model, build_reward_model
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.losses import PolicyLossSettings, policy_loss
from megatron_rm.ppo.objectives import ActorObjective, CriticObjective, Rollouts
from tests.conftest import tiny_model_config

VOCAB, TEMPERATURE = 300, 0.8
PROMPTS = [[1, 5, 9], [7, 3], [2, 2, 2, 4, 6], [8], [5, 6, 7, 8], [9, 9]]
RESPONSES = [[11, 12, 13, 2], [14, 2], [15, 16, 2], [17, 18, 19, 20, 21], [22, 2], [23]]


def per_row(seed: int) -> list[torch.Tensor]:
    """One value per position of each row (its whole document), fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(len(p) + len(r), generator=generator) for p, r in zip(PROMPTS, RESPONSES)]


OLD_LOGPROBS = [-1.0 - row.abs() for row in per_row(1)]
OLD_VALUES, ADVANTAGES, RETURNS = per_row(2), per_row(3), per_row(4)


def padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack([torch.cat([row, row.new_zeros(width - len(row))]) for row in rows])


def rollouts(indices: list[int], old_logprobs=None) -> Rollouts:
    batch = document_batch([PROMPTS[i] + RESPONSES[i] for i in indices], 0,
                           prompt_lengths=[len(PROMPTS[i]) for i in indices])
    width = batch.input_ids.shape[1]
    pick = lambda rows: padded([rows[i] for i in indices], width)  # noqa: E731
    return Rollouts(batch, old_logprobs if old_logprobs is not None else pick(OLD_LOGPROBS), pick(OLD_VALUES),
                    pick(ADVANTAGES), pick(RETURNS))


@pytest.fixture(scope="module")
def models(single_rank):
    torch.manual_seed(5)
    actor = build_policy_model(tiny_model_config(), ParallelConfig(), VOCAB)
    critic = build_reward_model(tiny_model_config(), ParallelConfig(), VOCAB)
    no_update = OptimizerConfig(lr=0.0, lr_decay_style="constant")  # lr 0: the weights never move
    return {name: build_optimizer(model, no_update, 10) for name, model in (("actor", actor), ("critic", critic))}, \
        single_rank


def step(models, name, objective, micro_batches):
    (ddp, optimizer, scheduler), layout = models[0][name], models[1]
    result = train_step(ddp, optimizer, scheduler, objective, micro_batches, 1.0, layout)
    return objective.summarize(result.sums), result.grad_norm


@pytest.mark.parametrize("name, objective", [
    ("actor", ActorObjective(VOCAB, TEMPERATURE, PolicyLossSettings(clip=0.2, dual_clip=3.0, entropy_coef=0.01))),
    ("critic", CriticObjective(clip=0.2))])
def test_losses_do_not_depend_on_the_micro_batch_split(models, name, objective):
    whole, whole_norm = step(models, name, objective, [rollouts(list(range(6)))])
    split, split_norm = step(models, name, objective, [rollouts([0, 1]), rollouts([2, 3, 4]), rollouts([5])])
    assert whole["tokens"] == split["tokens"] == sum(map(len, RESPONSES))
    for key in whole:
        assert split[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    assert split_norm == pytest.approx(whole_norm, rel=1e-5) and whole_norm > 0


def test_actor_loss_equals_a_float64_reference(models):
    ddp, _, _ = models[0]["actor"]
    micro = rollouts(list(range(6)))
    summary, _ = step(models, "actor", ActorObjective(VOCAB, TEMPERATURE, log_entropy=False), [micro])
    with torch.no_grad():
        logits = forward_logits(ddp, micro.batch).double()[..., :VOCAB] / TEMPERATURE
    targets, mask = next_token_targets(micro.batch)
    logprobs = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    ratio = (logprobs - micro.old_logprobs.double()).exp()
    advantages = micro.advantages.double()
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))
    assert summary["loss"] == pytest.approx(float(per_token[mask].mean()), rel=1e-5)


def test_the_first_update_has_ratio_exactly_one(models):
    ddp, _, _ = models[0]["actor"]
    micro = rollouts(list(range(6)))
    targets, _ = next_token_targets(micro.batch)
    with torch.no_grad():  # the old log-probabilities: the training forward on the same micro-batch
        old = token_logprobs(forward_logits(ddp, micro.batch), targets, VOCAB, TEMPERATURE)
    summary, norm = step(models, "actor", ActorObjective(VOCAB, TEMPERATURE), [rollouts(list(range(6)), old)])
    assert summary["clipped"] == 0.0 and summary["approx_kl"] == 0.0
    # A step with one update takes the update's own log-probabilities instead (no old forward):
    # the same loss and the same gradient.
    own = rollouts(list(range(6)))
    own.old_logprobs = None
    reused, reused_norm = step(models, "actor", ActorObjective(VOCAB, TEMPERATURE), [own])
    assert reused == summary and reused_norm == pytest.approx(norm, rel=1e-6)


def test_responses_left_out_of_the_policy_loss_still_train_the_critic(models):
    rows = list(range(6))
    learn = torch.tensor([True, False, True, True, False, True])
    masked = rollouts(rows)
    masked.policy_rows = learn
    actor, _ = step(models, "actor", ActorObjective(VOCAB, TEMPERATURE), [masked])
    critic, _ = step(models, "critic", CriticObjective(), [masked])
    assert actor["tokens"] == sum(len(RESPONSES[i]) for i in rows if learn[i])
    assert critic["tokens"] == sum(map(len, RESPONSES))
    only = step(models, "actor", ActorObjective(VOCAB, TEMPERATURE), [rollouts([i for i in rows if learn[i]])])[0]
    assert actor["loss"] == pytest.approx(only["loss"], rel=1e-6)


def test_the_engine_gap_and_the_importance_weights_are_taken_against_the_trainers_old_log_probabilities(models):
    """The engine's log-probabilities enter through `experience.engine_logprobs` at the positions of
    the response tokens; the gap statistics are |old - engine| and k3, and rollout.is_correction
    weights each token's loss by min(exp(old - engine), cap)."""
    from megatron_rm.generation.generator import EOS, Completion
    from megatron_rm.ppo.experience import engine_logprobs
    from megatron_rm.ppo.kl import kl_penalty

    rows = rollouts([0, 1, 2])
    _, mask = next_token_targets(rows.batch)
    shift = torch.tensor([0.0, 1.0, -3.0])  # old - engine per response: equal, the engine below, the engine above
    completions = [Completion(RESPONSES[i], (rows.old_logprobs[k][mask[k]] - shift[k]).tolist(), EOS)
                   for k, i in enumerate([0, 1, 2])]
    rows.engine_logprobs = engine_logprobs(rows.batch, completions)
    assert torch.equal(rows.engine_logprobs[~mask], torch.zeros(int((~mask).sum())))
    torch.testing.assert_close(rows.engine_logprobs[mask], (rows.old_logprobs - shift[:, None])[mask])

    _, layout = models
    settings = PolicyLossSettings()
    logits = torch.randn(*rows.batch.input_ids.shape, VOCAB, generator=torch.Generator().manual_seed(3),
                         requires_grad=True)
    plain = ActorObjective(VOCAB, TEMPERATURE, settings, engine=True)
    corrected = ActorObjective(VOCAB, TEMPERATURE, settings, engine=True, is_cap=2.0)
    loss, tokens, found = plain(rows, logits)
    stats = plain.summarize(found["sums"])
    gaps = (shift[:, None].expand_as(mask))[mask]
    assert stats["engine_abs_diff"] == pytest.approx(float(gaps.abs().mean()))
    k3 = kl_penalty(rows.engine_logprobs, rows.old_logprobs, "k3")[mask]
    assert stats["engine_k3"] == pytest.approx(float(k3.mean()))
    weighted, _, found = corrected(rows, logits)
    weights = shift.exp().clamp(max=2.0)  # 1, e^1 capped at 2, e^-3
    assert corrected.summarize(found["sums"])["is_weight"] == pytest.approx(
        float((weights[:, None].expand_as(mask))[mask].mean()))
    per_token = policy_loss(token_logprobs(logits, torch.roll(rows.batch.input_ids, -1, 1), VOCAB, TEMPERATURE),
                            rows.old_logprobs, rows.advantages, mask, settings,
                            token_weights=torch.where(mask, weights[:, None].expand_as(mask), 0.0))[0]
    torch.testing.assert_close(weighted, per_token)
    assert not torch.allclose(weighted, loss)
