"""Train a reward model (Bradley-Terry and its variants, or an outcome or process reward model)
with tensor, pipeline and data parallelism.

    torchrun --nproc-per-node 2 tools/train_rm.py parallel.tp=2 run.dir=runs/demo
    torchrun --nproc-per-node 8 tools/train_rm.py parallel.tp=2 parallel.pp=2
    torchrun --nproc-per-node 2 tools/train_rm.py checkpoint.load=ckpt/llama-rm parallel.tp=2
    torchrun --nproc-per-node 2 tools/train_rm.py loss.type=prm data.train_path=steps.jsonl

With checkpoint.load the model (architecture and tokenizer) is the checkpoint's,
e.g. one made by tools/convert_hf_to_megatron.py.

Configuration: conf/train_rm.yaml (defaults) + Hydra overrides `key=value`.
Writes run.dir/metrics.jsonl, run.dir/config.yaml and run.dir/checkpoints/step_<N>.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig

from megatron_rm.cli import CONF_DIR, register_schema, to_config
from megatron_rm.errors import exit_on_usage_error
from megatron_rm.runtime import parallel
from megatron_rm.training.loop import train

register_schema()


@hydra.main(config_path=CONF_DIR, config_name="train_rm", version_base="1.3")
def main(cfg) -> None:
    try:
        overrides = HydraConfig.get().overrides.task
        exit_on_usage_error(lambda: train(to_config(cfg, overrides)), rank=int(os.environ.get("RANK", "0")))
    finally:
        parallel.shutdown()


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
