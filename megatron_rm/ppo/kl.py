"""The KL penalty: per-token estimators and the controllers that set its coefficient.

Every estimator takes d = log pi(a) - log pi_ref(a) of each sampled action token:
- `k1`: d, unbiased for KL(pi || pi_ref), negative on some tokens;
- `abs`: |d| (NeMo-Aligner's `use_absolute_kl`);
- `k2`: d^2 / 2;
- `k3`: exp(-d) + d - 1, unbiased and never negative (Schulman's low-variance estimator).

Units: the value fed to a controller is the batch mean of each response's per-token mean
estimate (nats per token), as verl and OpenRLHF feed it; so `kl.target` is per token (e.g.
0.05), not the per-sequence sum of Ziegler et al. (where 6 nats over 24 tokens is 0.25 per
token). `kl_units` names it wherever it is logged.

Where the KL enters (`kl.placement`): `reward` (as Ziegler et al., OpenRLHF and verl's
`use_kl_in_reward`) subtracts kl_coef times the estimate from each token's reward; `loss` (the
GRPO paper, verl's `use_kl_loss`, NeMo-RL, TRL's `beta`) adds kl_coef times `kl_loss` to each
token's policy loss; `none` (DAPO, TRL's default beta 0) has no KL and no reference forward.

`AdaptiveKLController` is Ziegler et al.'s proportional controller:
value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon, with n_steps the number
of responses in the PPO step and `horizon` counted in responses, called once per step after
the update. Its value is state: it is checkpointed and restored, so a resumed run follows the
same coefficient trajectory.
"""

from __future__ import annotations

import torch

PLACEMENTS = ("reward", "loss", "none")
CONTROLLERS = ("adaptive", "fixed")
KL_UNITS = "nats per token (batch mean of each response's token mean)"


def _k3(d: torch.Tensor) -> torch.Tensor:
    # exp(-d) overflows fp32 beyond d < -88; such a token's estimate is huge either way.
    d = d.clamp(min=-20.0)
    return torch.expm1(-d) + d


def _k3_clamped(d: torch.Tensor) -> torch.Tensor:
    d = d.clamp(-20.0, 20.0)
    return (torch.expm1(-d) + d).clamp(max=10.0)


# name -> the estimate as a function of d = log pi - log pi_ref
ESTIMATORS = {"k1": lambda d: d, "abs": torch.abs, "k2": lambda d: 0.5 * d.square(), "k3": _k3}
# In the loss, k3 is verl's `low_var_kl` and NeMo-RL's: d clamped to [-20, 20] and the estimate to
# at most 10, so one token the reference finds unlikely cannot dominate the loss.
LOSS_ESTIMATORS = {"k1": ESTIMATORS["k1"], "k2": ESTIMATORS["k2"], "k3": _k3_clamped}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of the sampled tokens, same shape as the inputs."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} must be one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator](logprobs - ref_logprobs)


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL term of the policy loss (`kl.placement=loss`), differentiable in `logprobs`:
    `LOSS_ESTIMATORS` (k2's gradient is k1's value, the unbiased gradient of KL(pi || pi_ref))."""
    if estimator not in LOSS_ESTIMATORS:
        raise ValueError(f"KL loss estimator {estimator!r} must be one of {', '.join(LOSS_ESTIMATORS)}")
    return LOSS_ESTIMATORS[estimator](logprobs - ref_logprobs)


def mean_per_token(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's mean over its action tokens, (responses,); 0 for a response with none."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """A fixed coefficient ignores the KL."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not target > 0 or not horizon > 0:
            raise ValueError(f"an adaptive KL controller needs target > 0 and horizon > 0, got target={target}, "
                             f"horizon={horizon}")
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """After a PPO step whose `n_steps` responses had mean KL `current_kl` (KL_UNITS)."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(kind: str, init_coef: float, target: float | None = None,
                  horizon: int | None = None) -> FixedKLController:
    if kind == "fixed":
        return FixedKLController(init_coef)
    if kind == "adaptive":
        return AdaptiveKLController(init_coef, target if target is not None else 0.0,
                                    horizon if horizon is not None else 0)
    raise ValueError(f"KL controller {kind!r} must be one of {', '.join(CONTROLLERS)}")
