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

from megatron_rm.cli import hydra_main, to_config
from megatron_rm.training.loop import train


def run(cfg, overrides) -> None:
    train(to_config(cfg, overrides))


main = hydra_main("train_rm", run)


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
