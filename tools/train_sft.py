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

from megatron_rm.cli import hydra_main, to_config
from megatron_rm.training.loop import train
from megatron_rm.training.task import SFT


def run(cfg, overrides) -> None:
    train(to_config(cfg, overrides), SFT)


main = hydra_main("train_sft", run)


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
