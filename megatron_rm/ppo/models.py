"""The models of a run, found, checked and built at the job's layout: the actor (trained, and
its initial weights kept in CPU memory as the reference unless kl.placement=none), the critic
(trained; a reward model read at every token) when the advantage estimator needs one and, when
reward.model is set, the frozen reward model.

Everything that can be wrong with the sources is found before a process group starts: a
missing or wrong-kind model (a reward model as the actor, a policy as the critic), a folder
without a score head where a head is needed (none is drawn silently), a tokenizer that is not
the actor's (the critic and an in-job reward model read the actor's tokens).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from megatron_rm.config import POLICY, REWARD, OptimizerConfig, layout_problems
from megatron_rm.core.checkpoint import ModelState
from megatron_rm.errors import CheckpointError, ConfigError
from megatron_rm.loading.models import Found, find, job_layout
from megatron_rm.loading.reward import ScoringModel, scoring_model
from megatron_rm.loading.trainable import Trained, build_trainable
from megatron_rm.ppo.config import PPOConfig
from megatron_rm.ppo.reference import CpuReference
from megatron_rm.runtime.parallel import Layout

ACTOR, CRITIC = "actor", "critic"


@dataclass
class Sources:
    actor: Found
    critic: Found | None
    """None when the advantage estimator needs no critic."""
    reward: Found | None


def find_sources(cfg: PPOConfig, world_size: int, *, cuda: bool, te_available: bool) -> Sources:
    seed = cfg.train.seed
    actor = find(cfg.actor.init, POLICY, seed=seed)
    reward = _with_head(find(cfg.reward.model, REWARD, seed=seed), "reward.model") if cfg.reward.model else None
    # The critic starts from the reward model unless critic.init names another: found once.
    critic = None
    if cfg.needs_critic:
        critic = _with_head(find(cfg.critic.init, REWARD, seed=seed), "critic.init") if cfg.critic.init else reward
    # The reward model reads each rollout's text with its own tokenizer (`ppo.rewards`); the critic
    # reads the actor's token ids, so it must share the actor's vocabulary.
    if critic is not None and critic.tokenizer.get_vocab() != actor.tokenizer.get_vocab():
        key = "critic.init" if cfg.critic.init else "reward.model"
        raise ConfigError(f"{key}={critic.path} uses another vocabulary than actor.init={actor.path}, and the critic "
                          "reads the actor's tokens: set critic.init to a reward model on the actor's tokenizer")
    problems = []
    for key, found in (("actor", actor), ("critic", critic), ("reward", reward)):
        if found is not None:
            problems += layout_problems(found.config, cfg.parallel, world_size, len(found.tokenizer), prefix=key,
                                        cuda=cuda, te_available=te_available)
    longest_prompt = actor.config.max_sequence_length - cfg.rollout.max_new_tokens
    if longest_prompt < 1:
        problems.append(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room for a prompt under "
                        f"the actor's max_sequence_length={actor.config.max_sequence_length}")
    for key, found in (("critic", critic), ("reward", reward)):
        if found is not None and found.config.max_sequence_length < actor.config.max_sequence_length:
            problems.append(f"{key} max_sequence_length={found.config.max_sequence_length} is below the actor's "
                            f"{actor.config.max_sequence_length}: it could not read every response")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return Sources(actor, critic, reward)


def _with_head(found: Found, key: str) -> Found:
    if found.hf is not None and not found.hf.has_score:
        raise CheckpointError(f"{key}={found.path} has no score head (a *ForCausalLM folder): the critic and the "
                              "reward model need a trained reward model (*ForSequenceClassification or our reward "
                              "checkpoint)")
    return found


@dataclass
class PPOModels:
    actor: Trained
    critic: Trained | None
    """None when the advantage estimator needs no critic: nothing built, nothing checkpointed."""
    reference: CpuReference | None
    """None when nothing reads the reference policy (kl.placement=none)."""
    reward: ScoringModel | None
    layout: Layout
    tokenizer: object

    def states(self) -> dict[str, ModelState]:
        states = {ACTOR: self.actor.state}
        if self.critic is not None:
            states[CRITIC] = self.critic.state
        return states

    @property
    def vocab_size(self) -> int:
        """The actor's real vocabulary: logit columns at or past it are padding."""
        return self.actor.state.config.vocab_size or len(self.tokenizer)


def build_models(cfg: PPOConfig, sources: Sources, *, actor_steps: int, critic_steps: int) -> PPOModels:
    """Every model of the run on this rank, loaded from its source (a resumed run then loads its
    own checkpoint over the actor and the critic; the reference stays `actor.init`)."""
    t = cfg.train
    layout = job_layout(cfg.parallel, sources.actor.config, len(sources.actor.tokenizer), t.precision, t.seed)
    actor = _trained(sources.actor, cfg, cfg.actor.optim, actor_steps)
    reference = CpuReference(actor.module) if cfg.needs_reference else None
    critic = _trained(sources.critic, cfg, cfg.critic.optim, critic_steps) if sources.critic is not None else None
    reward = scoring_model(sources.reward, cfg.parallel, t.precision, t.seed) if sources.reward else None
    return PPOModels(actor, critic, reference, reward, layout, sources.actor.tokenizer)


def _trained(found: Found, cfg: PPOConfig, optim: OptimizerConfig, total_steps: int) -> Trained:
    return build_trainable(found.kind, found.config, cfg.parallel, len(found.tokenizer), optim, max(total_steps, 1),
                           precision=cfg.train.precision, weights=found)


@contextmanager
def in_eval_mode(models: list[torch.nn.Module]):
    """`models` in eval mode for the block (generation and the rollout forwards), training after."""
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model in models:
            model.train()
