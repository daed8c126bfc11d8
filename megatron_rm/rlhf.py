"""The RLHF math as plain functions on tensors, to check against any other implementation:

    from megatron_rm.rlhf import kl_penalty, gae, AdaptiveKLController, FixedKLController
    from megatron_rm.rlhf import group_advantages, aggregate_loss

- `kl_penalty(logprobs, ref_logprobs, estimator)`: the elementwise KL estimate of each sampled
  token (`k1`, `abs`, `k2`, `k3`; see `ppo.kl`);
- `gae(token_rewards, values, mask, gamma, lam) -> (advantages, returns)`: generalised advantage
  estimation over the masked (action) positions of (batch, response_length) tensors, unwhitened;
- `AdaptiveKLController(init_kl_coef, target, horizon)`, `FixedKLController(kl_coef)`: `.value`,
  `.update(current_kl, n_steps)`, `.state_dict()`, `.load_state_dict()`;
- `group_advantages(scores, groups, estimator, scale, eps)`: each response's advantage against
  the other responses to its prompt (GRPO, Dr. GRPO, RLOO; see `ppo.groups`);
- `aggregate_loss(per_token, mask, mode, norm) -> (numerator, denominator)`: a per-token loss
  as sums that make the global batch's token mean, sequence mean or Dr. GRPO's normalised sum.

PPO training (`tools/train_ppo.py`) calls the first four.
"""

from megatron_rm.ppo.advantages import gae
from megatron_rm.ppo.groups import aggregate_loss, group_advantages
from megatron_rm.ppo.kl import AdaptiveKLController, FixedKLController, kl_penalty

__all__ = ["AdaptiveKLController", "FixedKLController", "aggregate_loss", "gae", "group_advantages", "kl_penalty"]
