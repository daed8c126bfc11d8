"""Typed configuration for megatron-rm.

Plain dataclasses, one per config group. Hydra fills them at the CLI edge
(`tools/`); the library only ever sees these objects. `validate` checks a whole
config against the launch (world size, devices) before any process group or
model exists, and names every offending value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RopeScalingConfig:
    """RoPE frequency scaling, named as in Hugging Face's `rope_scaling`."""

    rope_type: str = "llama3"
    """llama3 (Llama 3.1: long wavelengths divided by `factor`, a smooth blend between)
    or linear (every frequency divided by `factor`)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


ROPE_SCALING_TYPES = ("llama3", "linear")
REWARD, POLICY = "reward", "policy"
"""The kinds of model a run trains and a checkpoint holds (`ModelEntry.kind`): a reward model
(a reward or token head) or a policy (a language-model head)."""
MODEL_KINDS = (REWARD, POLICY)
TRANSFORMER_IMPLS = ("auto", "sdpa", "local", "transformer_engine")
HEADS = ("sequence", "token")


@dataclass
class ModelConfig:
    """A Llama-style decoder with a reward head."""

    tokenizer: str = "examples/demo/tokenizer"
    """Hugging Face tokenizer folder."""
    append_eos: bool = True
    """Every complete text the model reads ends in the EOS (appended where the tokenizer does not
    write it), and a reward is read there: models trained here, and checkpoints saved before this
    field. false: the tokenizer's own ids, nothing appended (a Hugging Face reward model, imported
    or trained from one). See `megatron_rm.data.ending`."""
    pad_token_id: Optional[int] = None
    """With append_eos false: the pad id of the model's config.json; transformers does not read a
    reward at trailing pad tokens, so neither does scoring."""
    vocab_size: Optional[int] = None
    """Embedding rows before padding; None: the tokenizer's size. Converted models keep
    their Hugging Face `vocab_size`, which may exceed the tokenizer's."""
    family: str = "llama"
    """Hugging Face architecture this model exports to: llama, mistral or qwen2."""
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention; None means one per attention head."""
    kv_channels: Optional[int] = None
    """Per-head dimension; None means hidden_size / num_attention_heads."""
    ffn_hidden_size: int = 256
    max_sequence_length: int = 512
    normalization: str = "RMSNorm"
    """RMSNorm or LayerNorm."""
    norm_epsilon: float = 1e-5
    activation: str = "swiglu"
    """swiglu (gated SiLU, as Llama) or gelu."""
    position_embedding_type: str = "rope"
    """rope or learned_absolute."""
    rotary_base: float = 10000.0
    rope_scaling: Optional[RopeScalingConfig] = None
    sliding_window: Optional[int] = None
    """Mistral's attention window. Attention here always spans the whole document, which
    equals windowed attention while documents fit the window, so data.max_length must."""
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    """Bias on the q/k/v projection only (Qwen2)."""
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    """Reward models train without dropout by default, as TRL does, so runs repeat exactly."""
    attention_dropout: float = 0.0
    num_labels: int = 1
    """Reward head outputs: 1 for a scalar reward, more for multi-attribute heads; with
    head=token, the classes (2 or 3)."""
    head: str = "sequence"
    """Where a reward model is read. sequence: each document's last token, one reward per label
    (exported as *ForSequenceClassification); token: class logits at every token, the outcome and
    process reward models of loss.type=orm|prm (exported as *ForTokenClassification), whose
    positive class is the last."""
    head_bias: bool = False
    head_init_std: float = 0.02
    tie_word_embeddings: bool = False
    """Policy models: the output layer is the input embedding (Hugging Face's
    `tie_word_embeddings`, as in Qwen2-0.5B or Llama-3.2-1B). A reward model has no output layer."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this, independent of TP, so a
    checkpoint loads at any tensor-parallel size that divides the padded size."""
    transformer_impl: str = "auto"
    """auto (TransformerEngine when it imports and CUDA is present, else sdpa),
    sdpa (megatron-core modules with torch's scaled_dot_product_attention as the core
    attention), local (megatron-core's own modules only) or transformer_engine."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size. Data-parallel size is world_size / (tp * pp)."""
    sequence_parallel: bool = False
    """Split activations along the sequence across TP ranks (GPU with TransformerEngine)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (GPU only in megatron-core 0.16)."""


@dataclass
class OptimizerConfig:
    """One model's optimizer, learning-rate schedule and gradient clipping. A run with several
    trained models gives each its own; the reward-model run's are the `train.*` keys."""

    optimizer: str = "adamw"
    """adamw (decoupled weight decay) or adam (L2 penalty added to the gradient)."""
    lr: float = 1e-5
    """Peak learning rate, reached after the warm-up. 0 is allowed: the weights stay bit-identical
    (re-save a checkpoint at another layout, measure throughput, evaluate through training)."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    lr_warmup_steps: Optional[int] = None
    """Linear warm-up from 0 to `lr` over this many steps, which must be below the run's steps.
    Null: `lr_warmup_fraction` of the run. When set it takes precedence over the fraction."""
    lr_warmup_fraction: float = 0.0
    """Warm-up as a fraction of the run's steps (rounded down), as Megatron-LM's
    --lr-warmup-fraction: a default that suits runs of any length."""
    lr_decay_style: str = "cosine"
    """After the warm-up: cosine or linear decay from `lr` to `min_lr` at the last step, or constant `lr`."""
    weight_decay: float = 0.0
    """Applied to weight matrices only: never to norms, biases or other 1-D parameters."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip over TP/PP/DP; 0 disables (the norm is still logged)."""

    def warmup_steps(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps` (check `warmup_problem` first)."""
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        return int(self.lr_warmup_fraction * total_steps)


@dataclass
class LoopConfig:
    """A run's length, batches and numerics: what every trained model of the run shares."""

    max_steps: Optional[int] = None
    """Optimizer steps; 0 evaluates the starting weights (checkpoint.load) and saves nothing.
    Set this or `epochs`, not both; with neither the run is one epoch, the usual length for
    reward models (a second pass over preference pairs mostly overfits)."""
    epochs: Optional[int] = None
    """Passes over the training groups (each `num_groups // global_batch_size` steps)."""
    global_batch_size: int = 32
    """Groups (preference pairs, K-wise rankings, or single responses) per optimizer step, over all
    data-parallel ranks."""
    micro_batch_size: int = 8
    """Groups per micro-batch on one rank (a pair is two rows: chosen and rejected).
    With data.batching=pack a micro-batch holds as many groups as data.pack_length allows."""
    seed: int = 1234
    precision: str = "fp32"
    """fp32, or bf16 (GPU): bf16 weights and activations, fp32 master weights, gradients reduced
    in fp32; the reward head always computes in fp32."""
    recompute: str = "none"
    """Activation recomputation: none, selective (attention's core, megatron's default
    selective set) or full (every layer's input is kept, the layer recomputed in backward)."""
    max_skipped: int = 10
    """A step whose loss or gradient norm is not finite is skipped (no update) and counted;
    more than this many in a row stops the run."""
    log_interval: int = 25
    """metrics.jsonl gets a training row (and the console a progress line) every this many steps,
    summing the steps since the last row; train.log_interval=1 gives one row per step."""


@dataclass
class TrainConfig(LoopConfig, OptimizerConfig):
    """The reward-model run's `train.*` keys: its loop and its one model's optimizer, flat on the
    command line (`train.lr`, `train.max_steps`). Library code takes the part it needs, a
    LoopConfig or an OptimizerConfig, never this union."""


@dataclass
class LossConfig:
    type: str = "bradley_terry"
    """bradley_terry: -log sigmoid(r_c - r_r) over every (better, worse) pair (a K-wise group
    gives K(K-1)/2 pairs); margin: the same with each pair's data margin subtracted;
    plackett_luce: the likelihood of each group's whole ranking (equals bradley_terry for pairs);
    divergence: DeepSpeed-Chat's per-token loss over where chosen and rejected differ
    (pairs, data.batching=bucket); regression: mean squared error of each labelled attribute
    (model.num_labels attributes, missing labels ignored); orm: an outcome reward model, per-token
    cross-entropy of the outcome on every response token; prm: a process reward model,
    cross-entropy of each step's label at the step's last token."""
    centering_coef: float = 0.0
    """Reward centering: adds coef * mean((r_c + r_r)^2), pulling rewards toward zero mean
    (bradley_terry, margin)."""
    num_classes: int = 2
    """orm, prm: the classes of the token head (model.num_labels follows): 2 (wrong, right) or 3
    (wrong, neutral, right: PRM800K's ratings as they are)."""
    neutral: str = "negative"
    """prm with 2 classes: what a neutral (0) rating becomes: negative, positive or ignore (the
    step is not learnt). negative is TRL's mapping and keeps 0/1 integer labels right."""
    aggregation: Optional[str] = None
    """orm, prm: how token or step probabilities make a solution's score (evaluation, scoring):
    product, min, mean or last; null: product for prm (Lightman et al.), mean for orm."""


@dataclass
class SFTLossConfig(LossConfig):
    type: str = "sft"
    """sft: the mean negative log-likelihood of every response token (and the EOS ending the
    response) given the tokens before it; prompt tokens are context, never targets. The only
    loss `tools/train_sft.py` trains; the reward losses belong to `tools/train_rm.py`."""


@dataclass
class LoggingConfig:
    progress: bool = True
    """Rank 0 prints a progress line every train.log_interval steps (step, loss, accuracy, lr,
    tokens/s, ETA)."""
    tensorboard: bool = True
    """TensorBoard event files in run.dir/tensorboard."""
    wandb: bool = False
    """Weights & Biases (pip install wandb); WANDB_MODE=offline writes run.dir/wandb without network."""
    wandb_project: str = "megatron-rm"
    wandb_name: Optional[str] = None
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU; null: looked up for known GPUs (bf16 or TF32 dense).
    Without a peak (always on the CPU) only flops_per_s is logged."""


@dataclass
class DataConfig:
    train_path: str = "examples/demo/data/train.jsonl"
    """JSON Lines, JSON (an array of rows), Parquet, a Hugging Face `datasets` folder
    (`save_to_disk`), a folder of such files, or a token store from tools/preprocess_data.py."""
    eval_path: Optional[str] = "examples/demo/data/eval.jsonl"
    eval_fraction: float = 0.0
    """Hold out this fraction of train_path's prompts for evaluation (with eval_path=null);
    all rows of one prompt land on the same side."""
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    response_key: str = "response"
    """Single-response rows (pointwise: a response and its labels, no comparison)."""
    responses_key: str = "responses"
    """K-wise rows: a list of responses, ranked by `ranking_key` (indices, best first)."""
    ranking_key: str = "ranking"
    margin_key: str = "margin"
    """Optional per pair: the chosen reward must exceed the rejected one by this much."""
    labels_key: str = "labels"
    """Optional per response: a list of attribute values (null where missing). Stepwise rows
    (loss.type=prm): one rating per step."""
    completions_key: str = "completions"
    """Stepwise rows (loss.type=prm, TRL's stepwise supervision): the list of steps."""
    label_key: str = "label"
    """Outcome rows (loss.type=orm): the outcome (true/false, 0/1 or a probability); Math-Shepherd
    rows: the input's text with '+' or '-' in each step tag's place."""
    input_key: str = "input"
    """Math-Shepherd rows: the question and its steps, each step ended by data.step_tag."""
    step_separator: str = "\n"
    """Written after every step of a stepwise row; the step's label sits on the last token of
    (step + separator), so the separator must end a token of its own (checked per row)."""
    step_tag: str = "ки"
    """The step tag ending each step of a Math-Shepherd row."""
    max_length: int = 128
    """Longest document (prompt + response + EOS) in tokens."""
    truncation: str = "drop"
    """What to do with longer documents: drop (the whole group), truncate_prompt (cut the
    prompt from the left, keep the whole response and its EOS) or truncate_response
    (cut the response's end, keep the EOS). Every drop is counted by reason."""
    on_invalid: str = "error"
    """error: stop at start-up naming the bad rows; skip: leave them out and count them."""
    batching: str = "bucket"
    """bucket: one document per row, groups of similar length share a micro-batch;
    pack: a micro-batch is one row of several groups' documents (block-diagonal attention)."""
    bucket_window: int = 1
    """Global batches sorted by length together (bucket). 1: each step's groups are a
    uniform sample and only their split into micro-batches follows length; larger windows
    pad less (bench/padding_efficiency.py) but give steps of similar-length groups, which
    correlates consecutive gradients; 0: no sorting at all."""
    pad_to_multiple_of: int = 8
    """Rows are padded to their micro-batch's longest, rounded up to this (8 or 64 suit GPUs)."""
    pack_length: Optional[int] = None
    """Tokens per packed micro-batch (pack); null: 2 x train.micro_batch_size x max_length,
    the most an unpacked micro-batch can hold. A group never spans two micro-batches."""
    preprocess_workers: int = 1
    """Worker processes tokenizing raw files at start-up (rank 0; the result is cached in run.dir/data)."""


@dataclass
class EvalConfig:
    interval: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    micro_batch_size: Optional[int] = None
    """Groups per evaluation micro-batch; defaults to train.micro_batch_size."""


@dataclass
class RunConfig:
    dir: str = "runs/default"
    """Run directory: metrics.jsonl, config.yaml and checkpoints/."""


@dataclass
class BaseCheckpointConfig:
    """The `checkpoint` keys of every trainer: where a run resumes from and how it saves.
    `CheckpointConfig` (reward-model and SFT runs) adds `init`; PPO's (`ppo.config`) has no
    `init` (actor.init and critic.init name its starting weights) and resumes `auto` by default."""

    load: Optional[str] = None
    """Resume from a checkpoint, at any TP/PP layout: one checkpoint's folder; a run's
    `checkpoints/` folder (the checkpoint its `latest` file names, falling back to older ones
    when that one is damaged); or `auto`: this run's own run.dir/checkpoints when it has a
    checkpoint (a requeued job resumes), else a fresh start from checkpoint.init or random
    weights. A training checkpoint resumes the run (weights, optimizer, learning-rate
    schedule, data position, RNG); a converted one only gives the starting weights."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end and on SIGTERM). The last step is always saved."""
    keep: int = 3
    """Keep this many newest checkpoints of the run (0: all)."""
    load_optimizer: bool = True
    """false: resume weights, schedule and data position with a fresh optimizer state."""


@dataclass
class CheckpointConfig(BaseCheckpointConfig):
    init: Optional[str] = None
    """Starting weights for a new run (a converted model, or another run's checkpoint: its
    weights only, from step 0), used when checkpoint.load finds nothing to resume."""


@dataclass
class RMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class SFTConfig(RMConfig):
    """Supervised fine-tuning of a policy (`tools/train_sft.py`): the reward-model run's keys, with
    a next-token loss. A group is one example (a prompt and the response to imitate), so
    `train.global_batch_size` and `train.micro_batch_size` count examples."""

    loss: SFTLossConfig = field(default_factory=SFTLossConfig)


def padded_vocab_size(tokenizer_size: int, model: ModelConfig) -> int:
    """Embedding rows: `model.vocab_size` (else the tokenizer's size) rounded up to
    `make_vocab_size_divisible_by`."""
    multiple = model.make_vocab_size_divisible_by
    return -(-(model.vocab_size or tokenizer_size) // multiple) * multiple


TRUNCATION_MODES = ("drop", "truncate_prompt", "truncate_response")


def finite_problems(config, prefix: str = "") -> list[str]:
    """A problem for every float setting of `config` (nested groups included) that is nan or
    infinite: nan slips through every `not x > 0` check (PPO's rollout.no_eos_penalty=nan made
    every step non-finite, and skipped), and inf is no setting (rollout.temperature=inf samples
    uniformly)."""
    found = []
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found += finite_problems(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(f"{key}={value} must be a finite number")
        elif isinstance(value, (list, tuple)):
            found += [f"{key}[{i}]={item} must be a finite number" for i, item in enumerate(value)
                      if isinstance(item, float) and not math.isfinite(item)]
    return found


def _choice(key: str, value, allowed) -> list[str]:
    return [] if value in allowed else [f"{key}={value!r} must be one of {', '.join(allowed)}"]


def _at_least(minimum: int, values: dict[str, int]) -> list[str]:
    """A problem for each `key: value` below `minimum`."""
    return [f"{key}={value} must be >= {minimum}" for key, value in values.items() if not value >= minimum]


def data_problems(d: DataConfig, prefix: str = "data") -> list[str]:
    problems = (_choice(f"{prefix}.truncation", d.truncation, TRUNCATION_MODES)
                + _choice(f"{prefix}.on_invalid", d.on_invalid, ("error", "skip"))
                + _choice(f"{prefix}.batching", d.batching, ("bucket", "pack")))
    problems += _at_least(1, {f"{prefix}.pad_to_multiple_of": d.pad_to_multiple_of,
                              f"{prefix}.max_length": d.max_length,
                              f"{prefix}.preprocess_workers": d.preprocess_workers})
    if not 0.0 <= d.eval_fraction < 1.0:
        problems.append(f"{prefix}.eval_fraction={d.eval_fraction} must be in [0, 1)")
    if d.eval_fraction > 0 and d.eval_path:
        problems.append(f"{prefix}.eval_fraction={d.eval_fraction} and {prefix}.eval_path={d.eval_path} "
                        f"both set; use one ({prefix}.eval_path=null to split train_path by prompt)")
    if d.bucket_window < 0:
        problems.append(f"{prefix}.bucket_window={d.bucket_window} must be >= 0")
    if d.pack_length is not None and d.pack_length < d.max_length:
        problems.append(f"{prefix}.pack_length={d.pack_length} must be >= {prefix}.max_length={d.max_length}")
    return problems


def optimizer_problems(o: OptimizerConfig, prefix: str) -> list[str]:
    """Every problem with one model's optimizer group; `prefix` is its key (train, critic.optim, ...)."""
    problems = (_choice(f"{prefix}.optimizer", o.optimizer, ("adamw", "adam"))
                + _choice(f"{prefix}.lr_decay_style", o.lr_decay_style, ("cosine", "linear", "constant")))
    if not o.lr >= 0 or math.isinf(o.lr):
        problems.append(f"{prefix}.lr={o.lr} must be a finite number >= 0")
    if not 0 <= o.min_lr <= o.lr:
        problems.append(f"{prefix}.min_lr={o.min_lr} must be in [0, {prefix}.lr={o.lr}]")
    for name, value in (("weight_decay", o.weight_decay), ("clip_grad", o.clip_grad)):
        if not value >= 0:
            problems.append(f"{prefix}.{name}={value} must be >= 0")
    if o.lr_warmup_steps is not None and o.lr_warmup_steps < 0:
        problems.append(f"{prefix}.lr_warmup_steps={o.lr_warmup_steps} must be >= 0 or null")
    if not 0 <= o.lr_warmup_fraction < 1:
        problems.append(f"{prefix}.lr_warmup_fraction={o.lr_warmup_fraction} must be in [0, 1)")
    for name, value in (("adam_beta1", o.adam_beta1), ("adam_beta2", o.adam_beta2)):
        if not 0 <= value < 1:
            problems.append(f"{prefix}.{name}={value} must be in [0, 1)")
    if not o.adam_eps > 0:
        problems.append(f"{prefix}.adam_eps={o.adam_eps} must be > 0")
    return problems


def warmup_problem(o: OptimizerConfig, total_steps: int, prefix: str, length: str) -> str | None:
    """An explicit warm-up must end before the run does (`length` says where the run's
    `total_steps` come from, for the message)."""
    if o.lr_warmup_steps is not None and total_steps > 0 and o.lr_warmup_steps >= total_steps:
        return f"{prefix}.lr_warmup_steps={o.lr_warmup_steps} must be below {length}"
    return None


def loop_problems(t: LoopConfig, prefix: str, cuda: bool) -> list[str]:
    problems = (_choice(f"{prefix}.precision", t.precision, ("fp32", "bf16"))
                + _choice(f"{prefix}.recompute", t.recompute, ("none", "selective", "full")))
    problems += _at_least(1, {f"{prefix}.global_batch_size": t.global_batch_size,
                              f"{prefix}.micro_batch_size": t.micro_batch_size,
                              f"{prefix}.log_interval": t.log_interval})
    problems += _at_least(0, {f"{prefix}.max_skipped": t.max_skipped})
    if t.max_steps is not None:
        if t.max_steps < 0:
            problems.append(f"{prefix}.max_steps={t.max_steps} must be >= 0 (0: evaluate only)")
        if t.epochs is not None:
            problems.append(f"{prefix}.max_steps={t.max_steps} and {prefix}.epochs={t.epochs} both set; "
                            "use one (the other null)")
    if t.epochs is not None and t.epochs < 1:
        problems.append(f"{prefix}.epochs={t.epochs} must be >= 1 or null")
    if t.precision == "bf16" and not cuda:
        problems.append(f"{prefix}.precision=bf16 needs CUDA: on the CPU megatron-core's mixed-precision "
                        f"optimizer is not available; use {prefix}.precision=fp32")
    return problems


def model_problems(m: ModelConfig, prefix: str, *, cuda: bool, te_available: bool, vocab_size: int) -> list[str]:
    """Every problem with one model's architecture, whatever the layout; `vocab_size` is its tokenizer's."""
    problems = (_choice(f"{prefix}.normalization", m.normalization, ("RMSNorm", "LayerNorm"))
                + _choice(f"{prefix}.activation", m.activation, ("swiglu", "gelu"))
                + _choice(f"{prefix}.position_embedding_type", m.position_embedding_type,
                          ("rope", "learned_absolute"))
                + _choice(f"{prefix}.transformer_impl", m.transformer_impl, TRANSFORMER_IMPLS)
                + _choice(f"{prefix}.head", m.head, HEADS))
    if m.num_labels < 1:
        problems.append(f"{prefix}.num_labels={m.num_labels} must be >= 1")
    elif m.head == "token" and m.num_labels not in (2, 3):
        problems.append(f"{prefix}.num_labels={m.num_labels} with {prefix}.head=token must be 2 or 3 (classes)")
    for name, value in (("num_query_groups", m.num_query_groups), ("kv_channels", m.kv_channels)):
        if value is not None and value < 1:
            problems.append(f"{prefix}.{name}={value} must be >= 1 or null")
    if problems:
        return problems
    if m.kv_channels is None and m.hidden_size % m.num_attention_heads:
        problems.append(f"{prefix}.hidden_size={m.hidden_size} is not divisible by {prefix}.num_attention_heads="
                        f"{m.num_attention_heads}; set {prefix}.kv_channels for another head size")
    groups = m.num_query_groups or m.num_attention_heads
    if m.num_attention_heads % groups:
        problems.append(f"{prefix}.num_attention_heads={m.num_attention_heads} is not divisible by "
                        f"{prefix}.num_query_groups={groups}")
    if m.vocab_size is not None and m.vocab_size < vocab_size:
        problems.append(f"{prefix}.vocab_size={m.vocab_size} is smaller than the tokenizer's {vocab_size} "
                        f"tokens ({m.tokenizer})")
    if m.rope_scaling is not None:
        problems += _choice(f"{prefix}.rope_scaling.rope_type", m.rope_scaling.rope_type, ROPE_SCALING_TYPES)
    if m.transformer_impl == "transformer_engine" and not (cuda and te_available):
        problems.append(f"{prefix}.transformer_impl=transformer_engine needs CUDA and an importable "
                        f"transformer_engine (cuda={cuda}, transformer_engine={te_available})")
    return problems


def layout_problems(m: ModelConfig, p: ParallelConfig, world_size: int, vocab_size: int, *,
                    prefix: str = "model", cuda: bool, te_available: bool) -> list[str]:
    """Every reason `m` cannot be split `p.tp` x `p.pp` ways on `world_size` ranks."""
    problems = _at_least(1, {"parallel.tp": p.tp, "parallel.pp": p.pp})
    if problems:
        return problems
    model_parallel = p.tp * p.pp
    if world_size % model_parallel:
        problems.append(f"world size {world_size} is not divisible by parallel.tp={p.tp} x parallel.pp={p.pp}"
                        f" = {model_parallel}")
    if m.num_layers % p.pp:
        problems.append(f"{prefix}.num_layers={m.num_layers} is not divisible by parallel.pp={p.pp}")
    groups = m.num_query_groups or m.num_attention_heads
    for name, value in (("num_attention_heads", m.num_attention_heads), ("num_query_groups", groups),
                        ("ffn_hidden_size", m.ffn_hidden_size)):
        if value % p.tp:
            problems.append(f"{prefix}.{name}={value} is not divisible by parallel.tp={p.tp}")
    if m.hidden_size % p.tp:
        problems.append(f"{prefix}.hidden_size={m.hidden_size} is not divisible by parallel.tp={p.tp} "
                        "(the reward head is split along the hidden dimension)")
    padded = padded_vocab_size(vocab_size, m)
    if padded % p.tp:
        problems.append(f"padded vocabulary {padded} (tokenizer {vocab_size}, multiple of "
                        f"{prefix}.make_vocab_size_divisible_by={m.make_vocab_size_divisible_by}) "
                        f"is not divisible by parallel.tp={p.tp}")
    # Paths that megatron-core 0.16 only implements for CUDA tensors.
    if p.use_distributed_optimizer and not cuda:
        problems.append("parallel.use_distributed_optimizer=true needs CUDA: megatron-core 0.16's "
                        "distributed optimizer rejects CPU tensors; use the default optimizer on CPU")
    if p.sequence_parallel:
        if not (cuda and te_available and m.transformer_impl in ("auto", "transformer_engine")):
            problems.append("parallel.sequence_parallel=true needs CUDA and TransformerEngine (its norms "
                            f"handle sequence-split activations; cuda={cuda}, transformer_engine={te_available}, "
                            f"{prefix}.transformer_impl={m.transformer_impl})")
        if p.tp == 1:
            problems.append(f"parallel.sequence_parallel=true needs parallel.tp > 1 (got {p.tp})")
    return problems


def data_parallel_size(p: ParallelConfig, world_size: int) -> int:
    return max(world_size // max(p.tp * p.pp, 1), 1)


def batch_problems(t: LoopConfig, batching: str, dp: int, prefix: str = "train") -> list[str]:
    if batching == "pack":
        # A packed micro-batch holds as many groups as fit; only the ranks' shares must be equal.
        if t.global_batch_size % dp:
            return [f"{prefix}.global_batch_size={t.global_batch_size} is not divisible by the "
                    f"data-parallel size {dp}"]
        return []
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step:
        return [f"{prefix}.global_batch_size={t.global_batch_size} is not divisible by "
                f"{prefix}.micro_batch_size={t.micro_batch_size} x data-parallel size {dp} = {per_step}"]
    return []


def problems(cfg: RMConfig, world_size: int, *, cuda: bool, te_available: bool, vocab_size: int) -> list[str]:
    """Every reason the reward-model run `cfg` cannot run on this launch that its fields show: its
    model family and its loss add their own (`training.checks.validate`)."""
    m, p, t, d = cfg.model, cfg.parallel, cfg.train, cfg.data
    found = (loop_problems(t, "train", cuda) + optimizer_problems(t, "train") + data_problems(d)
             + model_problems(m, "model", cuda=cuda, te_available=te_available, vocab_size=vocab_size))
    found += finite_problems(cfg)
    found += _at_least(0, {"eval.interval": cfg.eval.interval, "checkpoint.save_interval": cfg.checkpoint.save_interval,
                           "checkpoint.keep": cfg.checkpoint.keep})
    if cfg.eval.micro_batch_size is not None and cfg.eval.micro_batch_size < 1:
        found.append(f"eval.micro_batch_size={cfg.eval.micro_batch_size} must be >= 1 or null")
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        found.append("logging.wandb=true needs the wandb package: pip install wandb")
    if cfg.logging.peak_flops is not None and not cfg.logging.peak_flops > 0:
        found.append(f"logging.peak_flops={cfg.logging.peak_flops} must be > 0 or null")
    if found:
        return found  # the checks below divide by these values
    found += layout_problems(m, p, world_size, vocab_size, cuda=cuda, te_available=te_available)
    found += batch_problems(t, d.batching, data_parallel_size(p, world_size))
    if t.max_steps is not None:
        found += filter(None, [warmup_problem(t, t.max_steps, "train", f"train.max_steps={t.max_steps}")])
    if d.max_length > m.max_sequence_length:
        found.append(f"data.max_length={d.max_length} exceeds model.max_sequence_length={m.max_sequence_length}")
    if m.sliding_window is not None and d.max_length > m.sliding_window:
        found.append(f"data.max_length={d.max_length} exceeds model.sliding_window={m.sliding_window}:"
                     " attention here is not windowed, so documents must fit the window")
    return found
