"""A policy at TP2xPP2 whose weights leave through the weight stream, and a checkpoint of the same
weights for `export_hf` to compare with (tests/convert/test_weight_stream.py).

    torchrun --standalone --nproc-per-node 4 tests/convert/weight_stream_worker.py OUT

Builds the tiny policy (conf/model/tiny.yaml) at TP2xPP2 with random weights, takes one optimizer
step (REINFORCE on two demo answers) (so the stream reads trained weights, with their
optimizer state beside them), saves the checkpoint to OUT/checkpoint, and writes the streamed
(name -> tensor) dict, as the replica's first rank received it, to OUT/streamed.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_rm.config import POLICY, ModelConfig, OptimizerConfig, ParallelConfig
from megatron_rm.convert.weight_stream import hf_weights
from megatron_rm.core import checkpoint
from megatron_rm.core.optim import train_step
from megatron_rm.data import document_batch, load_tokenizer
from megatron_rm.loading.trainable import build_trainable
from megatron_rm.ppo.losses import PolicyLossSettings
from megatron_rm.ppo.objectives import ActorObjective, Rollouts
from megatron_rm.runtime import parallel

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    out = Path(sys.argv[1])
    fields = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    config = ModelConfig(**{**fields, "tokenizer": str(REPO / fields["tokenizer"])})
    tokenizer = load_tokenizer(config.tokenizer)
    layout_config = ParallelConfig(tp=2, pp=2)
    layout = parallel.initialize(layout_config, seed=7)
    actor = build_trainable(POLICY, config, layout_config, len(tokenizer), OptimizerConfig(lr=1e-2), 4,
                            precision="fp32")
    texts = ["User: Name 2 fruits.\nAssistant: 1. fig 2. lime", "User: Name 1 color.\nAssistant: 1. teal"]
    batch = document_batch([tokenizer(text)["input_ids"] for text in texts], tokenizer.pad_token_id or 0,
                           prompt_lengths=[4, 4])
    rollouts = Rollouts(batch, None, None, torch.ones(batch.input_ids.shape), None)  # REINFORCE, advantage 1
    objective = ActorObjective(len(tokenizer), 1.0, PolicyLossSettings(kind="reinforce"))
    result = train_step(actor.ddp, actor.optimizer, actor.scheduler, objective, [rollouts], 1.0, layout)
    assert not result.skipped and result.grad_norm > 0
    checkpoint.save(out / "checkpoint", 1, {"actor": actor.state}, tokenizer=tokenizer)
    streamed = dict(hf_weights([actor.ddp], layout, config, POLICY, len(tokenizer)))
    if dist.get_rank() == 0:
        torch.save(streamed, out / "streamed.pt")
    else:
        assert not streamed
    parallel.shutdown()


if __name__ == "__main__":
    main()
