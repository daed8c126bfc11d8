from megatron_rm.model.factory import build_reward_model, transformer_config
from megatron_rm.model.reward_head import RewardHead
from megatron_rm.model.reward_model import RewardModel

__all__ = ["RewardHead", "RewardModel", "build_reward_model", "transformer_config"]
