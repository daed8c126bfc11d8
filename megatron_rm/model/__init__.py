from megatron_rm.model.factory import build_policy_model, build_reward_model, transformer_config
from megatron_rm.model.policy import PolicyModel
from megatron_rm.model.reward_head import RewardHead
from megatron_rm.model.reward_model import RewardModel

__all__ = ["PolicyModel", "RewardHead", "RewardModel", "build_policy_model", "build_reward_model",
           "transformer_config"]
