"""Supervised fine-tuning (SFT) of a policy, with tensor, pipeline and data parallelism: the
warm start before RLHF. Next-token loss on response tokens only.

    torchrun --nproc-per-node 2 tools/train_sft.py parallel.tp=2 run.dir=runs/sft
    torchrun --nproc-per-node 2 tools/train_sft.py checkpoint.load=ckpt/llama-policy parallel.tp=2 \
        data.train_path=sft.jsonl data.eval_path=heldout.jsonl

Rows are {prompt, response}, {messages} (the final assistant message is the response) or
preference rows (the chosen response is taught). With checkpoint.load the model is the
checkpoint's policy, e.g. one made by tools/convert_hf_to_megatron.py --model-kind policy.

Configuration: conf/train_sft.yaml (defaults) + Hydra overrides `key=value`.
Writes run.dir/metrics.jsonl, run.dir/config.yaml and run.dir/checkpoints/step_<N>.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig

from megatron_rm.cli import CONF_DIR, register_schema, to_config
from megatron_rm.errors import exit_on_usage_error
from megatron_rm.runtime import parallel
from megatron_rm.training.loop import train
from megatron_rm.training.task import SFT

register_schema()


@hydra.main(config_path=CONF_DIR, config_name="train_sft", version_base="1.3")
def main(cfg) -> None:
    try:
        overrides = HydraConfig.get().overrides.task
        exit_on_usage_error(lambda: train(to_config(cfg, overrides), SFT), rank=int(os.environ.get("RANK", "0")))
    finally:
        parallel.shutdown()


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
