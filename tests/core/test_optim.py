"""Optimizer, schedule, guards and recomputation on one rank with the real megatron stack."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from megatron_rm.config import RMConfig, TrainConfig
from megatron_rm.core.optim import SkipGuard, StepResult, build_optimizer, train_step
from megatron_rm.data import Batch, load_tokenizer
from megatron_rm.errors import TrainingError
from megatron_rm.model import build_reward_model
from megatron_rm.objectives import build_objective
from tests.conftest import tiny_model_config


def _config(**train) -> RMConfig:
    cfg = RMConfig(model=tiny_model_config())
    cfg.train = dataclasses.replace(TrainConfig(max_steps=10, lr=1e-3), **train)
    return cfg


def _model(cfg: RMConfig, recompute: str = "none"):
    torch.manual_seed(0)
    return build_reward_model(cfg.model, cfg.parallel, len(load_tokenizer(cfg.model.tokenizer)),
                              recompute=recompute)


def _batch(seed: int = 0) -> Batch:
    """Four pairs of right-padded random documents."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 20, (8,), generator=generator)
    ids = torch.randint(3, 250, (8, 24), generator=generator)
    mask = (torch.arange(24)[None, :] < lengths[:, None]).long()
    comparisons = torch.arange(8).reshape(4, 2)
    return Batch(ids * mask, mask, comparisons, torch.zeros(4), group_sizes=torch.full((4,), 2))


def test_weight_decay_skips_norms_and_biases(single_rank):
    cfg = _config(weight_decay=0.1)
    model = _model(cfg)
    _, optimizer, _ = build_optimizer(model, cfg.train, 10)
    decay = {id(p): group["wd_mult"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        expected = 0.0 if param.dim() == 1 or name.endswith(".bias") else 1.0
        assert decay[id(param)] == expected, name
    assert any("layernorm" in name or "norm" in name for name, p in model.named_parameters() if p.dim() == 1)


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_warmup_then_decay_to_min_lr(single_rank, style):
    cfg = _config(lr_warmup_steps=4, lr_decay_style=style, min_lr=1e-4)
    _, optimizer, scheduler = build_optimizer(_model(cfg), cfg.train, 20)
    lrs = []
    for _ in range(21):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(increment=1)
    assert lrs[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    # Step s (0-based) of decay: fraction (s - warmup) / (total - warmup) of the way to min_lr.
    fraction = [(s - 4) / 16 for s in range(4, 21)]
    expected = {
        "cosine": [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * f)) for f in fraction],
        "linear": [1e-3 - (1e-3 - 1e-4) * f for f in fraction],
        "constant": [1e-3] * len(fraction),
    }[style]
    assert lrs[4:] == pytest.approx(expected, rel=1e-9)


def test_warmup_as_a_fraction_of_the_run(single_rank):
    cfg = _config(lr_warmup_fraction=0.25, lr_decay_style="constant")
    for total, warmup in ((20, 5), (3, 0)):
        assert cfg.train.warmup_steps(total) == warmup
        _, optimizer, scheduler = build_optimizer(_model(cfg), cfg.train, total)
        lrs = []
        for _ in range(total):
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step(increment=1)
        assert lrs == pytest.approx([1e-3 * min(s / warmup, 1.0) if warmup else 1e-3 for s in range(total)])
    explicit = _config(lr_warmup_steps=2, lr_warmup_fraction=0.25)
    assert explicit.train.warmup_steps(20) == 2  # explicit steps win over the fraction


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw"])
def test_lr_zero_leaves_every_weight_bit_identical(single_rank, optimizer_name):
    cfg = _config(lr=0.0, min_lr=0.0, weight_decay=0.1, optimizer=optimizer_name)
    model = _model(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, 10)
    for seed in range(3):
        result = train_step(ddp_model, optimizer, scheduler, build_objective(cfg.loss, 1),
                            [_batch(seed)],
                            cfg.train.clip_grad, single_rank)
        assert not result.skipped and result.grad_norm > 0 and result.lr == 0.0
    assert optimizer.optimizer.state  # Adam did step: its moments moved, the weights did not
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name


def test_adam_and_adamw_differ_only_with_weight_decay(single_rank):
    weights = {}
    for optimizer_name in ("adam", "adamw"):
        cfg = _config(optimizer=optimizer_name, weight_decay=0.5, lr=1e-2)
        model = _model(cfg)
        ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, 10)
        train_step(ddp_model, optimizer, scheduler, build_objective(cfg.loss, 1),
                   [_batch()], cfg.train.clip_grad, single_rank)
        weights[optimizer_name] = model.decoder.layers[0].mlp.linear_fc2.weight.detach().clone()
    assert not torch.allclose(weights["adam"], weights["adamw"])


def test_a_non_finite_step_is_skipped_and_changes_nothing(single_rank):
    cfg = _config()
    model = _model(cfg)
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, 10)
    objective = build_objective(cfg.loss, 1)
    with torch.no_grad():
        model.decoder.layers[0].mlp.linear_fc2.weight[0, 0] = float("nan")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train_step(ddp_model, optimizer, scheduler, objective, [_batch()], cfg.train.clip_grad, single_rank)
    assert result.skipped and not math.isfinite(result.grad_norm)
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().nan_to_num(7.0), before[name].nan_to_num(7.0)), name
    assert not optimizer.state  # Adam never stepped
    assert scheduler.num_steps == 1  # the step's data is consumed; the schedule moves on


def test_a_finite_step_clips_to_the_global_norm(single_rank):
    cfg = _config(clip_grad=1e-3, lr=1e-3)
    model = _model(cfg)
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, 10)
    result = train_step(ddp_model, optimizer, scheduler, build_objective(cfg.loss, 1),
                        [_batch()], cfg.train.clip_grad, single_rank)
    assert not result.skipped and result.grad_norm > 1e-3
    clipped = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
    assert clipped == pytest.approx(1e-3, rel=1e-4)


def test_too_many_skips_in_a_row_stop_the_run():
    guard = SkipGuard(max_in_a_row=2)
    bad, good = StepResult(None, float("nan"), True, 0.0), StepResult(None, 1.0, False, 0.0)
    for step, result in enumerate([bad, bad, good, bad, bad], start=1):
        guard.record(step, result)
    assert guard.total == 4 and guard.in_a_row == 2
    with pytest.raises(TrainingError, match=r"step 6: 3 steps in a row .* train.max_skipped=2"):
        guard.record(6, bad)


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recomputation_gives_the_same_loss_and_gradients(single_rank, recompute):
    results = {}
    for mode in ("none", recompute):
        cfg = _config(clip_grad=0.0)
        model = _model(cfg, mode)
        ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, 10)
        result = train_step(ddp_model, optimizer, scheduler, build_objective(cfg.loss, 1),
                            [_batch(), _batch(1)], 0.0, single_rank)
        results[mode] = (build_objective(cfg.loss, 1).loss_of(result.sums), result.grad_norm,
                         {n: p.detach().clone() for n, p in model.named_parameters()})
    assert results[recompute][0] == pytest.approx(results["none"][0], rel=1e-6)
    assert results[recompute][1] == pytest.approx(results["none"][1], rel=1e-5)
    for name, value in results["none"][2].items():
        torch.testing.assert_close(results[recompute][2][name], value, rtol=1e-5, atol=1e-7)
