"""PPO: a policy trained against a reward model, with a critic and an adaptive KL penalty to the
starting policy, on megatron-core at any TP/PP/DP.

    torchrun --nproc-per-node 2 tools/train_ppo.py actor.init=runs/sft/checkpoints \
        reward.model=runs/demo/checkpoints run.dir=runs/ppo
    torchrun --nproc-per-node 8 tools/train_ppo.py parallel.tp=2 actor.init=ckpt/policy \
        reward.url=http://rm-host:8000 critic.init=ckpt/rm data.prompts_path=prompts.jsonl

The critic starts from critic.init (default: reward.model). A requeued job resumes from
run.dir/checkpoints (checkpoint.load=auto, the default), KL coefficient included; SIGTERM saves
and stops. The trained actor exports with
    tools/convert_megatron_to_hf.py --megatron-dir run.dir/checkpoints --model actor --out-dir DIR

Configuration: conf/train_ppo.yaml (defaults) + Hydra overrides `key=value`.
Writes run.dir/metrics.jsonl, run.dir/samples/eval_step_<N>.jsonl and run.dir/checkpoints/step_<N>.
"""

from omegaconf import OmegaConf

from megatron_rm.cli import hydra_main
from megatron_rm.ppo.trainer import train_ppo


# PPOConfig has no `model` for to_config to take from a checkpoint (actor.init, critic.init and
# reward.model name the models): the composed config is used as it is.
def run(cfg, _overrides) -> None:
    train_ppo(OmegaConf.to_object(cfg))


main = hydra_main("train_ppo", run)


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
