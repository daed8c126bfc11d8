"""What the layout-parity workers share: a few training steps and an evaluation from one checkpoint,
and the test fixture that runs a worker at TP1 (the reference) and at TP2, PP2 and DP2."""

from __future__ import annotations

import json

import torch

from megatron_rm.core.optim import build_optimizer, train_step
from megatron_rm.core.schedule import run_objective
from megatron_rm.training.data_setup import MicroBatching, eval_micro_batches, sampler_for, train_micro_batches
from tests.conftest import torchrun

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "dp2": (1, 1)}


def train_and_evaluate(model, split, layout, cfg, pad: int, objective, steps: int) -> dict:
    """`steps` optimizer steps of `objective` on `split`: per step the loss, its terms and the gradient
    norm; then the evaluation summary of the trained weights on the same split."""
    ddp_model, optimizer, scheduler = build_optimizer(model, cfg.train, steps)
    sampler = sampler_for(split, cfg.data, cfg.train)
    batching = MicroBatching.of(cfg.data, cfg.train.micro_batch_size, pad)
    out = {"losses": [], "terms": [], "grad_norms": []}
    for step in range(steps):
        batches = train_micro_batches(split, sampler, step, layout, batching)
        result = train_step(ddp_model, optimizer, scheduler, objective, batches, cfg.train.clip_grad, layout)
        out["losses"].append(objective.summarize(result.sums)["loss"])
        out["terms"].append(int(objective.layout.unpack(result.sums)["loss_terms"]))
        out["grad_norms"].append(result.grad_norm)
    ddp_model.eval()
    with torch.no_grad():
        sums = sum(run_objective([ddp_model], batches, objective, layout, forward_only=True)
                   for batches in eval_micro_batches(split, layout, batching))
    out["eval"] = objective.summarize(sums)
    return out


def layout_runs(root, worker) -> dict[str, list[dict]]:
    """Run `worker` as the one-rank reference (`tp1`, which saves the checkpoint) and as one 2-rank
    job over LAYOUTS; every rank's JSON result, by layout name."""
    checkpoint = root / "checkpoint"
    torchrun(1, worker, "--checkpoint", str(checkpoint), "--layout", "1", "1", str(root / "tp1"), "--create")
    layouts = [arg for name, (tp, pp) in LAYOUTS.items() for arg in ("--layout", str(tp), str(pp), str(root / name))]
    torchrun(2, worker, "--checkpoint", str(checkpoint), *layouts)
    return {name: [json.loads(p.read_text()) for p in sorted((root / name).glob("rank*.json"))]
            for name in ["tp1", *LAYOUTS]}
