"""GRPO and the critic-free family: the PPO trainer with GRPO's defaults (conf/train_grpo.yaml):
group-relative advantages over 8 responses per prompt, no critic, the KL to the starting policy
in the loss, rewards from Python functions, a reward model or both.

    torchrun --nproc-per-node 2 tools/train_grpo.py actor.init=runs/sft/checkpoints \
        reward.functions=[gsm8k] data.prompts_path=gsm8k_train.jsonl run.dir=runs/grpo
    torchrun --nproc-per-node 8 tools/train_grpo.py actor.init=ckpt/policy algorithm.group_scale=none \
        ppo.loss_agg=seq_mean_token_sum_norm          # Dr. GRPO
    torchrun --nproc-per-node 2 tools/train_grpo.py ... reward.functions=[my_rewards.py:length] \
        reward.model=runs/demo/checkpoints reward.weights=[1.0,0.5]

algorithm.advantage picks the estimator (grpo, rloo, reinforce_pp, reinforce_pp_baseline; gae
needs a critic and is tools/train_ppo.py's default). A requeued job resumes from
run.dir/checkpoints; SIGTERM saves and stops. The actor exports like PPO's:
    tools/convert_megatron_to_hf.py --megatron-dir run.dir/checkpoints --model actor --out-dir DIR

Configuration: conf/train_grpo.yaml (defaults) + Hydra overrides `key=value`; every key is
PPOConfig's (megatron_rm/ppo/config.py).
"""

from omegaconf import OmegaConf

from megatron_rm.cli import hydra_main
from megatron_rm.ppo.trainer import train_ppo


def run(cfg, _overrides) -> None:
    train_ppo(OmegaConf.to_object(cfg))


main = hydra_main("train_grpo", run)


# dist_checkpointing starts spawned helper processes that re-import this file.
if __name__ == "__main__":
    main()
