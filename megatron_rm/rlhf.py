"""The RLHF math as plain functions on tensors, to check against any other implementation:

    from megatron_rm.rlhf import kl_penalty, gae, AdaptiveKLController, FixedKLController

- `kl_penalty(logprobs, ref_logprobs, estimator)`: the elementwise KL estimate of each sampled
  token (`k1`, `abs`, `k2`, `k3`; see `ppo.kl`);
- `gae(token_rewards, values, mask, gamma, lam) -> (advantages, returns)`: generalised advantage
  estimation over the masked (action) positions of (batch, response_length) tensors, unwhitened;
- `AdaptiveKLController(init_kl_coef, target, horizon)`, `FixedKLController(kl_coef)`: `.value`,
  `.update(current_kl, n_steps)`, `.state_dict()`, `.load_state_dict()`.

PPO training (`tools/train_ppo.py`) calls exactly these.
"""

from megatron_rm.ppo.advantages import gae
from megatron_rm.ppo.kl import AdaptiveKLController, FixedKLController, kl_penalty

__all__ = ["AdaptiveKLController", "FixedKLController", "gae", "kl_penalty"]
