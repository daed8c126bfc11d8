"""The actor's and the critic's PPO losses as megatron loss functions on rollout micro-batches.

Both follow the objective interface `core.schedule.run_objective` and `core.optim.train_step`
take (`forward`, `__call__` returning (loss sum, terms, {"sums": ...}), `size`,
`loss_is_finite`): each loss is a sum over action tokens with the token count as its terms, so
megatron's per-token normalisation makes it the token mean of the whole global batch however
it is split into micro-batches and data-parallel ranks.

Positions are in log-probability space: position t is the action that produced token t + 1,
an action when token t + 1 is a response token of the same document (`next_token_targets`,
shared with SFT), so a response's EOS is an action and the prompt never is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from megatron_rm.data import Batch
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.model.vocab_parallel import token_entropy, token_logprobs
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.ppo.kl import kl_penalty
from megatron_rm.ppo.losses import PolicyLossSettings, policy_loss, value_loss


@dataclass
class Rollouts:
    """A micro-batch of responses for the update: the documents (prompt + response, with their
    response mask) and, per position, what the rollout phase computed. Rows as in `batch`."""

    batch: Batch
    old_logprobs: torch.Tensor | None
    """(rows, seq) log-probabilities of the actions under the policy that sampled them; None:
    the update's own, detached (a step with one update, before which the policy has not moved)."""
    old_values: torch.Tensor | None
    """(rows, seq) the critic's values before the update; None without a critic."""
    advantages: torch.Tensor
    returns: torch.Tensor | None
    """(rows, seq) the critic's targets; None without a critic."""
    policy_rows: torch.Tensor | None = None
    """(rows,) bool: the responses the policy loss learns from (None: all); the critic learns
    from every response (see `experience`, no_eos)."""
    ref_logprobs: torch.Tensor | None = None
    """(rows, seq) the reference policy's log-probabilities, for a KL term in the loss (kl.placement=loss)."""
    engine_logprobs: torch.Tensor | None = None
    """(rows, seq) the log-probabilities the rollout engine reported for the sampled tokens."""

    @property
    def input_ids(self) -> torch.Tensor:  # megatron's schedule sizes its buffers from it
        return self.batch.input_ids

    def to(self, device) -> Rollouts:
        def moved(x):
            return None if x is None else x.to(device)
        return replace(self, batch=self.batch.to(device), old_logprobs=moved(self.old_logprobs),
                       old_values=moved(self.old_values), advantages=self.advantages.to(device),
                       returns=moved(self.returns), policy_rows=moved(self.policy_rows),
                       ref_logprobs=moved(self.ref_logprobs), engine_logprobs=moved(self.engine_logprobs))


class _PPOObjective:
    fields: tuple[str, ...] = ()
    """The statistics summed with the loss; each is divided by `tokens` (the action tokens) at the end."""

    @property
    def size(self) -> int:
        return 2 + len(self.fields)

    def _result(self, loss: torch.Tensor, denominator: torch.Tensor, stats: dict):
        sums = torch.stack([loss.detach().double(), denominator.double(), *(stats[name] for name in self.fields)])
        return loss, denominator.to(torch.int), {"sums": sums}

    def summarize(self, sums: torch.Tensor) -> dict:
        """The loss (numerator over denominator) and the token means of the statistics, over every
        micro-batch and rank."""
        named = dict(zip(self.fields, sums[2:].tolist()))
        tokens = named.pop("tokens")
        means = {name: value / tokens if tokens else math.nan for name, value in named.items()}
        return {"loss": float(sums[0]) / float(sums[1]) if float(sums[1]) else math.nan, **means,
                "tokens": int(tokens)}

    def loss_is_finite(self, sums: torch.Tensor) -> bool:
        return not float(sums[1]) or math.isfinite(float(sums[0]))


class ActorObjective(_PPOObjective):
    """The policy loss (`losses.policy_loss`) on the actor's log-probabilities at the sampling temperature.

    With the engine's log-probabilities (`engine=True`) it also sums how far they are from the
    trainer's old ones over the loss's tokens, `engine_abs_diff` (|old - engine|) and `engine_k3`
    (k3 of KL(engine || trainer), the sampled tokens being the engine's), and with `is_cap` it
    weights each token's loss by min(pi_old / pi_engine, is_cap) (truncated importance sampling)."""

    def __init__(self, vocab_size: int, temperature: float, settings: PolicyLossSettings | None = None,
                 log_entropy: bool = True, engine: bool = False, is_cap: float | None = None):
        self.vocab_size, self.temperature = vocab_size, temperature
        self.settings = settings or PolicyLossSettings()
        self.with_entropy = log_entropy or self.settings.entropy_coef > 0
        self.engine, self.is_cap = engine, is_cap
        self.fields = ("tokens", "clipped", "approx_kl", *(("entropy",) if self.with_entropy else ()),
                       *(("kl_loss",) if self.settings.kl_coef else ()),
                       *(("engine_abs_diff", "engine_k3") if engine else ()), *(("is_weight",) if is_cap else ()))

    def forward(self, model, rollouts: Rollouts) -> torch.Tensor:
        return forward_logits(model, rollouts.batch)

    def __call__(self, rollouts: Rollouts, logits: torch.Tensor):
        targets, mask = next_token_targets(rollouts.batch)
        if rollouts.policy_rows is not None:
            mask = mask & rollouts.policy_rows[:, None]
        logprobs = token_logprobs(logits, targets, self.vocab_size, self.temperature)
        entropy = token_entropy(logits, self.vocab_size, self.temperature) if self.with_entropy else None
        if entropy is not None and not self.settings.entropy_coef:
            entropy = entropy.detach()  # logged only: no second backward through the softmax
        old = rollouts.old_logprobs if rollouts.old_logprobs is not None else logprobs.detach()
        weights = None
        if self.is_cap:
            weights = torch.where(mask, (old - rollouts.engine_logprobs).exp().clamp(max=self.is_cap), 0.0)
        loss, denominator, stats = policy_loss(logprobs, old, rollouts.advantages, mask, self.settings, entropy,
                                               rollouts.ref_logprobs, weights)
        if self.engine:
            with torch.no_grad():
                engine = rollouts.engine_logprobs
                stats["engine_abs_diff"] = torch.where(mask, old - engine, 0.0).abs().sum().double()
                stats["engine_k3"] = torch.where(mask, kl_penalty(engine, old, "k3"), 0.0).sum().double()
        if weights is not None:
            stats["is_weight"] = weights.sum().double()
        return self._result(loss, denominator, stats)


class CriticObjective(_PPOObjective):
    """The clipped value loss on the critic's per-position values (a reward model's head read at
    every token)."""

    fields = ("tokens", "clipped")

    def __init__(self, clip: float | None = 0.2):
        self.clip = clip

    def forward(self, model, rollouts: Rollouts) -> torch.Tensor:
        # (rows, seq, labels) on the last stage; activations for the next stage elsewhere.
        return forward_documents(model, rollouts.batch, token_values=True)

    def __call__(self, rollouts: Rollouts, values: torch.Tensor):
        _, mask = next_token_targets(rollouts.batch)
        return self._result(*value_loss(values[..., 0], rollouts.old_values, rollouts.returns, mask, self.clip))
