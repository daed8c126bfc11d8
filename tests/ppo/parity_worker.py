"""Several layouts of the PPO and GRPO parity tests in one job: tools/train_ppo.py's run (or
tools/train_grpo.py's, --config train_grpo), composed from conf/<config>.yaml exactly as the tool
composes it, at each layout in turn (process groups of its own each time), which saves a launch
per layout.

    torchrun --standalone --nproc-per-node 2 tests/ppo/parity_worker.py [--config train_grpo] \
        --layout 2 1 RUN_TP2 --layout 1 2 RUN_PP2 --layout 1 1 RUN_DP2 -- key=value ...
"""

import argparse

from hydra import compose, initialize_config_dir
from megatron.core import parallel_state
from omegaconf import OmegaConf

from megatron_rm.cli import CONF_DIR, register_schema
from megatron_rm.ppo.trainer import train_ppo
from megatron_rm.runtime import parallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="train_ppo")
    parser.add_argument("--layout", nargs=3, action="append", required=True, metavar=("TP", "PP", "RUN_DIR"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    register_schema()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for tp, pp, run_dir in args.layout:
            cfg = compose(args.config, [*args.overrides, f"parallel.tp={tp}", f"parallel.pp={pp}",
                                        f"run.dir={run_dir}"])
            train_ppo(OmegaConf.to_object(cfg))
            parallel_state.destroy_model_parallel()
    parallel.shutdown()


if __name__ == "__main__":
    main()
