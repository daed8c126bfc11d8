"""Typed configuration of a PPO run (`tools/train_ppo.py`, conf/train_ppo.yaml), validated like
training's: every problem is named with its key before any process group or model exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_rm.config import (
    BaseCheckpointConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelConfig,
    RunConfig,
    _at_least,
    _choice,
    data_parallel_size,
    finite_problems,
    optimizer_problems,
)
from megatron_rm.errors import ConfigError
from megatron_rm.generation.engine import ENGINES
from megatron_rm.ppo.estimators import ADVANTAGE_ESTIMATORS
from megatron_rm.ppo.experience import NO_EOS_POLICIES
from megatron_rm.ppo.groups import GROUP_SCALES, LOSS_AGGREGATIONS
from megatron_rm.ppo.kl import CONTROLLERS, ESTIMATORS, LOSS_ESTIMATORS, PLACEMENTS
from megatron_rm.ppo.losses import POLICY_LOSSES
from megatron_rm.ppo.reward_sources import COMBINE_MODES


@dataclass
class ActorConfig:
    init: Optional[str] = None
    """The starting policy, which is also the frozen reference: a policy checkpoint (trained by
    tools/train_sft.py or converted with --model-kind policy) or a Hugging Face *ForCausalLM folder."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-6, lr_decay_style="constant"))


@dataclass
class AlgorithmConfig:
    advantage: str = "gae"
    """The advantage estimator (`ppo.estimators`): gae (with a critic), grpo, rloo, reinforce_pp or
    reinforce_pp_baseline; the last four build no critic."""
    group_scale: str = "std"
    """grpo: std divides by the group's std (GRPO); none does not (Dr. GRPO)."""
    std_eps: float = 1e-6
    """Added to the group's std, outside the square root (verl's 1e-6; TRL 1e-4, OpenRLHF 1e-9)."""


@dataclass
class CriticConfig:
    init: Optional[str] = None
    """The critic's starting weights: a reward model (our checkpoint, or a *ForSequenceClassification
    folder) whose head, read at every token, gives the values; null: reward.model. A policy or a
    folder without a score head is refused (no head is drawn silently)."""
    warmup_steps: int = 0
    """The first steps train the critic alone: the actor and the KL coefficient stay as they are."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5, lr_decay_style="constant"))


@dataclass
class RewardConfig:
    model: Optional[str] = None
    """A reward model run inside this job (our checkpoint or a *ForSequenceClassification folder);
    it must share the actor's tokenizer. At most one of this and `url`."""
    url: Optional[str] = None
    """A reward server speaking our POST /get_reward (tools/serve_rm.py, OpenRLHF's protocol): a
    reward model with another tokenizer or on other machines."""
    normalize: bool = False
    """Standardise scores with the reward model's stored statistics (its final evaluation's mean
    and std); with `url`, start the server with --normalize instead."""
    clip: Optional[float] = None
    """Scores are clipped to [-clip, clip] after normalising; null: not clipped."""
    timeout_s: float = 60.0
    retries: int = 6
    """A failed request to `url` is retried this many times, then the run stops. The waits double from
    `backoff_s`: 1 + 2 + ... + 32 = 63 s by default, longer than a reward server takes to restart."""
    backoff_s: float = 1.0
    """The wait before the first retry."""
    batch_size: int = 256
    """Texts per request to `url` (0: a replica's whole step in one request; our server takes up to
    1024 per request by default)."""
    functions: list[str] = field(default_factory=list)
    """Reward functions: built-ins (gsm8k, math, exact_match), FILE.py:NAME or package.module:NAME,
    each called as TRL calls one, fn(prompts, completions, **columns) -> list[float | None]."""
    weights: Optional[list[float]] = None
    """One weight per source: the functions in order, then reward.model or reward.url; null: all 1."""
    combine: str = "sum"
    """sum: the weighted sum of the sources (a None counts as absent, as TRL's nansum); normalize_then_sum:
    each source standardised over the step's responses first."""
    overlong_buffer: int = 0
    """DAPO's overlong shaping: a response longer than rollout.max_new_tokens - overlong_buffer tokens
    loses overlong_penalty x (its excess / overlong_buffer), down to -overlong_penalty; 0: off."""
    overlong_penalty: float = 1.0


@dataclass
class PromptDataConfig:
    prompts_path: str = "examples/demo/data/train.jsonl"
    """Rows with `prompt` (a string or messages) or `messages`, in any data-pipeline format; other
    fields are ignored (kept in evaluation samples)."""
    eval_prompts_path: Optional[str] = "examples/demo/data/eval.jsonl"
    on_invalid: str = "error"
    """error: stop at start-up naming the bad rows; skip: leave them out and count them."""
    prompt_policy: str = "error"
    """A prompt with no room for rollout.max_new_tokens under the actor's max_sequence_length:
    error (an invalid row) or truncate_prompt (its oldest tokens are cut)."""


@dataclass
class PPOLoopConfig:
    max_steps: int = 100
    """PPO steps: each samples, scores and trains on `prompts_per_step` x samples_per_prompt responses."""
    prompts_per_step: int = 16
    """Prompts per step over all data-parallel ranks."""
    micro_batch_size: int = 8
    """Responses per micro-batch on one rank (the rollout forwards and the update); a mini-batch
    is whole micro-batches, so a run takes the largest size up to this that divides a replica's
    share of the mini-batch (`PPOConfig.micro_batch_size`)."""
    seed: int = 1234
    precision: str = "fp32"
    log_interval: int = 1
    max_skipped: int = 10
    """Updates with a non-finite loss or gradient norm are skipped; more than this many in a row stop the run."""


@dataclass
class RolloutConfig:
    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    """Sampling temperature; log-probabilities (old, reference, new) are taken at it."""
    batch_size: int = 64
    """Responses generated at once on one data-parallel replica."""
    no_eos: str = "mask"
    """A response cut at max_new_tokens: mask (scored, trains the critic, left out of the policy
    loss) or penalty (its score becomes no_eos_penalty and it trains both)."""
    no_eos_penalty: float = -1.0
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: groups whose rewards are all equal are dropped and more prompts sampled
    until the step holds train.prompts_per_step groups that differ (`ppo.sampling`)."""
    dynamic_sampling_max_batches: int = 10
    """Rounds of train.prompts_per_step prompts a step may sample (NeMo-RL's 10, verl's max_num_gen_batches);
    more stop the run."""
    engine: str = "megatron"
    """What samples the responses (`generation.engine`): megatron (the actor's own chunks) or vllm
    (weights pushed after every actor update). The trainer's forward gives the old log-probabilities
    either way; each step logs how far the engine's are from them."""
    is_correction: bool = False
    """Truncated importance sampling (Yao et al. 2025, verl's tis_imp_ratio_cap): each token's policy
    loss is weighted by min(pi_trainer / pi_engine, is_cap), for what the engine's numerics changed."""
    is_cap: float = 2.0


@dataclass
class KLConfig:
    type: str = "adaptive"
    """adaptive (Ziegler et al.'s proportional controller) or fixed."""
    init_coef: float = 0.05
    target: float = 0.1
    """KL the adaptive controller steers to, in nats per token (see ppo.kl: KL_UNITS)."""
    horizon: int = 10000
    """Responses over which the adaptive controller closes the gap."""
    estimator: str = "k1"
    """Per-token estimate: k1, abs, k2 or k3 in the reward; k1, k2 or k3 (verl's clamped low_var_kl) in the loss."""
    placement: str = "reward"
    """reward: -coef x KL in each token's reward; loss: +coef x KL in each token's policy loss (needs
    kl.type=fixed); none: no KL, and no reference forward."""


@dataclass
class PPOUpdateConfig:
    epochs: int = 1
    """Passes over each step's rollouts."""
    mini_batch_size: int = 0
    """Responses per optimizer step over all data-parallel ranks; 0: all of the step's responses."""
    clip: float = 0.2
    """The ratio is clipped to [1 - clip, 1 + clip_high]."""
    clip_high: Optional[float] = None
    """The upper clip (null: ppo.clip). DAPO's clip-higher sets 0.28 with clip 0.2, so that
    unlikely tokens with a positive advantage can grow (verl clip_ratio_high, TRL epsilon_high)."""
    dual_clip: Optional[float] = None
    policy_loss: str = "clipped"
    """clipped: PPO's clipped surrogate; reinforce: -A x log pi (no ratio)."""
    loss_agg: str = "token_mean"
    """token_mean, seq_mean_token_mean, seq_mean_token_sum or seq_mean_token_sum_norm (Dr. GRPO), each
    over the whole mini-batch at any layout (`groups.aggregate_loss`)."""
    loss_norm_tokens: Optional[int] = None
    """seq_mean_token_sum_norm's constant; null: rollout.max_new_tokens."""
    value_clip: Optional[float] = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.0


@dataclass
class PPOEvalConfig:
    interval: int = 0
    """Responses to data.eval_prompts_path (greedy by default) are scored at step 0, every this many
    steps and at the end (0: only at the start and the end), written to run.dir/samples/eval_step_<N>.jsonl."""
    max_prompts: int = 0
    """Evaluate the first this many prompts (0: all)."""
    temperature: float = 0.0
    """0: greedy responses. Above 0, sampled ones: response i of every evaluation draws from
    (train.seed + 1, i), so evaluations of the same run compare the same random draws."""


@dataclass
class PPOCheckpointConfig(BaseCheckpointConfig):
    load: Optional[str] = "auto"
    """auto: resume from run.dir/checkpoints when it has a checkpoint; a folder: resume that run's
    checkpoint (at any TP/PP); null: always start from actor.init and critic.init."""


@dataclass
class PPOConfig:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    train: PPOLoopConfig = field(default_factory=PPOLoopConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    ppo: PPOUpdateConfig = field(default_factory=PPOUpdateConfig)
    eval: PPOEvalConfig = field(default_factory=PPOEvalConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/ppo"))
    checkpoint: PPOCheckpointConfig = field(default_factory=PPOCheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def critic_init(self) -> Optional[str]:
        return self.critic.init or self.reward.model

    @property
    def needs_critic(self) -> bool:
        return ADVANTAGE_ESTIMATORS[self.algorithm.advantage].needs_critic

    @property
    def needs_reference(self) -> bool:
        return self.kl.placement != "none"

    def responses_per_step(self) -> int:
        return self.train.prompts_per_step * self.rollout.samples_per_prompt

    def mini_batch_size(self) -> int:
        return self.ppo.mini_batch_size or self.responses_per_step()

    def micro_batch_size(self, dp: int) -> int:
        """Responses per micro-batch at data-parallel size `dp`: train.micro_batch_size, or the
        largest divisor of a replica's share of the mini-batch below it."""
        share = self.mini_batch_size() // dp
        return max(size for size in range(1, min(self.train.micro_batch_size, share) + 1) if share % size == 0)


def ppo_problems(cfg: PPOConfig, world_size: int, *, cuda: bool) -> list[str]:
    """Every reason `cfg` cannot run on `world_size` ranks that the config alone shows (the models'
    own checks come when they are found)."""
    t, r, k, p = cfg.train, cfg.rollout, cfg.kl, cfg.ppo
    found = [] if cfg.actor.init else ["actor.init must name the starting policy"]
    found += finite_problems(cfg)
    found += _choice("algorithm.advantage", cfg.algorithm.advantage, tuple(ADVANTAGE_ESTIMATORS))
    found += _choice("algorithm.group_scale", cfg.algorithm.group_scale, GROUP_SCALES)
    if not cfg.algorithm.std_eps >= 0:
        found.append(f"algorithm.std_eps={cfg.algorithm.std_eps} must be >= 0")
    found += reward_problems(cfg)
    if cfg.algorithm.advantage in ADVANTAGE_ESTIMATORS:
        found += algorithm_problems(cfg)
    if cfg.reward.url and cfg.reward.normalize:
        found.append("reward.normalize=true with reward.url: start the server with --normalize instead")
    found += optimizer_problems(cfg.actor.optim, "actor.optim") + optimizer_problems(cfg.critic.optim, "critic.optim")
    found += _choice("train.precision", t.precision, ("fp32", "bf16"))
    if t.precision == "bf16" and not cuda:
        found.append("train.precision=bf16 needs CUDA; use train.precision=fp32 on the CPU")
    found += _choice("kl.type", k.type, CONTROLLERS) + _choice("kl.placement", k.placement, PLACEMENTS)
    found += _choice("kl.estimator", k.estimator, LOSS_ESTIMATORS if k.placement == "loss" else ESTIMATORS)
    if k.placement == "loss" and k.type == "adaptive":
        found.append("kl.placement=loss needs kl.type=fixed (the adaptive controller steers a KL penalty in the "
                     "reward; no anchor drives a loss coefficient)")
    found += _choice("ppo.policy_loss", p.policy_loss, POLICY_LOSSES)
    found += _choice("ppo.loss_agg", p.loss_agg, LOSS_AGGREGATIONS)
    if p.loss_norm_tokens is not None and not p.loss_norm_tokens >= 1:
        found.append(f"ppo.loss_norm_tokens={p.loss_norm_tokens} must be >= 1 or null (rollout.max_new_tokens)")
    found += _choice("rollout.no_eos", r.no_eos, NO_EOS_POLICIES)
    found += _choice("rollout.engine", r.engine, ENGINES)
    if r.is_correction and not r.is_cap >= 1:
        found.append(f"rollout.is_cap={r.is_cap} must be >= 1 (the largest weight a token's loss may get)")
    found += _choice("data.on_invalid", cfg.data.on_invalid, ("error", "skip"))
    found += _choice("data.prompt_policy", cfg.data.prompt_policy, ("error", "truncate_prompt"))
    found += _at_least(1, {"train.prompts_per_step": t.prompts_per_step, "train.micro_batch_size": t.micro_batch_size,
                           "train.log_interval": t.log_interval, "rollout.samples_per_prompt": r.samples_per_prompt,
                           "rollout.max_new_tokens": r.max_new_tokens, "rollout.batch_size": r.batch_size,
                           "ppo.epochs": p.epochs, "reward.retries + 1": cfg.reward.retries + 1,
                           "rollout.dynamic_sampling_max_batches": r.dynamic_sampling_max_batches})
    if r.dynamic_sampling and r.samples_per_prompt < 2:
        found.append(f"rollout.dynamic_sampling compares the responses to one prompt: rollout.samples_per_prompt="
                     f"{r.samples_per_prompt} must be >= 2")
    found += _at_least(0, {"train.max_steps": t.max_steps, "train.max_skipped": t.max_skipped,
                           "critic.warmup_steps": cfg.critic.warmup_steps, "ppo.mini_batch_size": p.mini_batch_size,
                           "eval.interval": cfg.eval.interval, "eval.max_prompts": cfg.eval.max_prompts,
                           "checkpoint.save_interval": cfg.checkpoint.save_interval,
                           "checkpoint.keep": cfg.checkpoint.keep, "reward.batch_size": cfg.reward.batch_size,
                           "reward.backoff_s": cfg.reward.backoff_s})
    if not cfg.eval.temperature >= 0:
        found.append(f"eval.temperature={cfg.eval.temperature} must be >= 0 (0: greedy)")
    if not r.temperature > 0:
        found.append(f"rollout.temperature={r.temperature} must be > 0 (PPO needs a sampled policy's probabilities)")
    if k.type == "adaptive":
        if not k.target > 0:
            found.append(f"kl.target={k.target} must be > 0 (nats per token) for kl.type=adaptive")
        if not k.horizon > 0:
            found.append(f"kl.horizon={k.horizon} must be > 0 (responses) for kl.type=adaptive")
    if k.init_coef < 0:
        found.append(f"kl.init_coef={k.init_coef} must be >= 0")
    if not 0 < p.clip < 1:
        found.append(f"ppo.clip={p.clip} must be in (0, 1)")
    if p.clip_high is not None and not p.clip_high > 0:
        found.append(f"ppo.clip_high={p.clip_high} must be > 0 or null")
    if p.dual_clip is not None and not p.dual_clip > 1:
        found.append(f"ppo.dual_clip={p.dual_clip} must be > 1 or null")
    if p.value_clip is not None and not p.value_clip > 0:
        found.append(f"ppo.value_clip={p.value_clip} must be > 0 or null")
    for name, value in (("gamma", p.gamma), ("lam", p.lam)):
        if not 0 <= value <= 1:
            found.append(f"ppo.{name}={value} must be in [0, 1]")
    if not p.entropy_coef >= 0:
        found.append(f"ppo.entropy_coef={p.entropy_coef} must be >= 0")
    if cfg.reward.clip is not None and not cfg.reward.clip > 0:
        found.append(f"reward.clip={cfg.reward.clip} must be > 0 or null")
    if not cfg.reward.timeout_s > 0:
        found.append(f"reward.timeout_s={cfg.reward.timeout_s} must be > 0")
    if found:
        return found
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    if tp < 1 or pp < 1 or world_size % (tp * pp):
        return [f"world size {world_size} is not divisible by parallel.tp={tp} x parallel.pp={pp}"]
    dp = data_parallel_size(cfg.parallel, world_size)
    if t.prompts_per_step % dp:
        found.append(f"train.prompts_per_step={t.prompts_per_step} is not divisible by the data-parallel size {dp}")
    responses, mini = cfg.responses_per_step(), cfg.mini_batch_size()
    if responses % mini:
        found.append(f"ppo.mini_batch_size={mini} does not divide the step's {responses} responses "
                     f"(train.prompts_per_step x rollout.samples_per_prompt)")
    elif mini % dp:
        found.append(f"ppo.mini_batch_size={mini} is not divisible by the data-parallel size {dp}")
    return found


def reward_problems(cfg: PPOConfig) -> list[str]:
    """Where the rewards come from: at most one of reward.model and reward.url, with or without
    functions, and a weight per source."""
    reward = cfg.reward
    found = []
    if reward.model and reward.url:
        found.append("set at most one of reward.model (a reward model in this job) and reward.url (a reward server)")
    if not (reward.model or reward.url or reward.functions):
        found.append("no reward: set reward.model, reward.url or reward.functions")
    sources = len(reward.functions) + bool(reward.model or reward.url)
    if reward.weights is not None and len(reward.weights) != sources:
        found.append(f"reward.weights has {len(reward.weights)} values for {sources} reward sources (reward.functions "
                     "in order, then reward.model or reward.url)")
    found += _choice("reward.combine", reward.combine, COMBINE_MODES)
    if not reward.overlong_buffer >= 0:
        found.append(f"reward.overlong_buffer={reward.overlong_buffer} must be >= 0")
    elif reward.overlong_buffer > cfg.rollout.max_new_tokens:
        found.append(f"reward.overlong_buffer={reward.overlong_buffer} exceeds rollout.max_new_tokens="
                     f"{cfg.rollout.max_new_tokens}")
    if not reward.overlong_penalty >= 0:
        found.append(f"reward.overlong_penalty={reward.overlong_penalty} must be >= 0")
    return found


def algorithm_problems(cfg: PPOConfig) -> list[str]:
    """What the advantage estimator needs: a critic and its source, or several responses per prompt."""
    name, found = cfg.algorithm.advantage, []
    spec = ADVANTAGE_ESTIMATORS[name]
    if spec.needs_groups and cfg.rollout.samples_per_prompt < 2:
        found.append(f"algorithm.advantage={name} compares the responses to one prompt: rollout.samples_per_prompt="
                     f"{cfg.rollout.samples_per_prompt} must be >= 2")
    if spec.needs_critic and not cfg.critic_init:
        found.append(f"algorithm.advantage={name} needs a critic: set critic.init (or reward.model, which it "
                     "starts from by default) to a reward model")
    if not spec.needs_critic:
        if cfg.critic.init:
            found.append(f"critic.init is set but algorithm.advantage={name} uses no critic")
        if cfg.critic.warmup_steps:
            found.append(f"critic.warmup_steps={cfg.critic.warmup_steps} with algorithm.advantage={name}, "
                         "which uses no critic")
    return found


def validate_ppo(cfg: PPOConfig, world_size: int, *, cuda: bool) -> None:
    found = ppo_problems(cfg, world_size, cuda=cuda)
    if found:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(found))
