"""Typed configuration for megatron-rm.

Plain dataclasses, one per config group. Hydra fills them at the CLI edge
(`tools/`); the library only ever sees these objects. `validate` checks a whole
config against the launch (world size, devices) before any process group or
model exists, and names every offending value.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Optional

from megatron_rm.errors import ConfigError


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
FAMILIES = ("llama", "mistral", "qwen2")
TRANSFORMER_IMPLS = ("auto", "sdpa", "local", "transformer_engine")


@dataclass
class ModelConfig:
    """A Llama-style decoder with a reward head."""

    tokenizer: str = "examples/demo/tokenizer"
    """Hugging Face tokenizer folder."""
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
    """Reward head outputs: 1 for a scalar reward, more for multi-attribute heads."""
    head_bias: bool = False
    head_init_std: float = 0.02
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
class TrainConfig:
    max_steps: Optional[int] = None
    """Optimizer steps; 0 evaluates the starting weights (checkpoint.load) and saves nothing.
    Set this or `epochs`, not both; with neither the run is one epoch, the usual length for
    reward models (a second pass over preference pairs mostly overfits)."""
    epochs: Optional[int] = None
    """Passes over the training groups (each `num_groups // global_batch_size` steps)."""
    global_batch_size: int = 32
    """Groups (preference pairs, or K-wise rankings) per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 8
    """Groups per micro-batch on one rank (a pair is two rows: chosen and rejected).
    With data.batching=pack a micro-batch holds as many groups as data.pack_length allows."""
    seed: int = 1234
    optimizer: str = "adamw"
    """adamw (decoupled weight decay) or adam (L2 penalty added to the gradient)."""
    lr: float = 1e-5
    """Peak learning rate, reached after the warm-up."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    lr_warmup_steps: int = 0
    """Linear warm-up from 0 to `lr` over this many steps."""
    lr_decay_style: str = "cosine"
    """After the warm-up: cosine or linear decay from `lr` to `min_lr` at the last step, or constant `lr`."""
    weight_decay: float = 0.0
    """Applied to weight matrices only: never to norms, biases or other 1-D parameters."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip over TP/PP/DP; 0 disables (the norm is still logged)."""
    precision: str = "fp32"
    """fp32, or bf16 (GPU): bf16 weights and activations, fp32 master weights, gradients reduced
    in fp32; the reward head always computes in fp32."""
    recompute: str = "none"
    """Activation recomputation: none, selective (attention's core, megatron's default
    selective set) or full (every layer's input is kept, the layer recomputed in backward)."""
    max_skipped: int = 10
    """A step whose loss or gradient norm is not finite is skipped (no update) and counted;
    more than this many in a row stops the run."""
    log_interval: int = 10


LOSS_TYPES = ("bradley_terry", "margin", "plackett_luce", "divergence", "regression")


@dataclass
class LossConfig:
    type: str = "bradley_terry"
    """bradley_terry: -log sigmoid(r_c - r_r) over every (better, worse) pair (a K-wise group
    gives K(K-1)/2 pairs); margin: the same with each pair's data margin subtracted;
    plackett_luce: the likelihood of each group's whole ranking (equals bradley_terry for pairs);
    divergence: DeepSpeed-Chat's per-token loss over where chosen and rejected differ
    (pairs, data.batching=bucket); regression: mean squared error of each labelled attribute
    (model.num_labels attributes, missing labels ignored)."""
    centering_coef: float = 0.0
    """Reward centering: adds coef * mean((r_c + r_r)^2), pulling rewards toward zero mean
    (bradley_terry, margin)."""


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
    responses_key: str = "responses"
    """K-wise rows: a list of responses, ranked by `ranking_key` (indices, best first)."""
    ranking_key: str = "ranking"
    margin_key: str = "margin"
    """Optional per pair: the chosen reward must exceed the rejected one by this much."""
    labels_key: str = "labels"
    """Optional per response: a list of attribute values (null where missing)."""
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
class CheckpointConfig:
    load: Optional[str] = None
    """Resume from a checkpoint, at any TP/PP layout: one checkpoint's folder; a run's
    `checkpoints/` folder (the checkpoint its `latest` file names, falling back to older ones
    when that one is damaged); or `auto`: this run's own run.dir/checkpoints when it has a
    checkpoint (a requeued job resumes), else a fresh start from checkpoint.init or random
    weights. A training checkpoint resumes the run (weights, optimizer, learning-rate
    schedule, data position, RNG); a converted one only gives the starting weights."""
    init: Optional[str] = None
    """Starting weights for a new run (a converted model, or another run's checkpoint: its
    weights only, from step 0), used when checkpoint.load finds nothing to resume."""
    save_interval: int = 0
    """Save every this many steps (0: only at the end). The last step is always saved."""
    keep: int = 3
    """Keep this many newest checkpoints of the run (0: all)."""
    load_optimizer: bool = True
    """false: resume weights, schedule and data position with a fresh optimizer state."""


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


def padded_vocab_size(tokenizer_size: int, model: ModelConfig) -> int:
    """Embedding rows: `model.vocab_size` (else the tokenizer's size) rounded up to
    `make_vocab_size_divisible_by`."""
    multiple = model.make_vocab_size_divisible_by
    return -(-(model.vocab_size or tokenizer_size) // multiple) * multiple


TRUNCATION_MODES = ("drop", "truncate_prompt", "truncate_response")


def _data_problems(d: DataConfig) -> list[str]:
    problems = []
    for name, value, allowed in (("truncation", d.truncation, TRUNCATION_MODES),
                                 ("on_invalid", d.on_invalid, ("error", "skip")),
                                 ("batching", d.batching, ("bucket", "pack"))):
        if value not in allowed:
            problems.append(f"data.{name}={value!r} must be one of {', '.join(allowed)}")
    if not 0.0 <= d.eval_fraction < 1.0:
        problems.append(f"data.eval_fraction={d.eval_fraction} must be in [0, 1)")
    if d.eval_fraction > 0 and d.eval_path:
        problems.append(f"data.eval_fraction={d.eval_fraction} and data.eval_path={d.eval_path} "
                        "both set; use one (data.eval_path=null to split train_path by prompt)")
    if d.bucket_window < 0:
        problems.append(f"data.bucket_window={d.bucket_window} must be >= 0")
    if d.pack_length is not None and d.pack_length < d.max_length:
        problems.append(f"data.pack_length={d.pack_length} must be >= data.max_length={d.max_length}")
    return problems


def _train_problems(t: TrainConfig, cuda: bool) -> list[str]:
    problems = []
    for name, value, allowed in (("optimizer", t.optimizer, ("adamw", "adam")),
                                 ("lr_decay_style", t.lr_decay_style, ("cosine", "linear", "constant")),
                                 ("precision", t.precision, ("fp32", "bf16")),
                                 ("recompute", t.recompute, ("none", "selective", "full"))):
        if value not in allowed:
            problems.append(f"train.{name}={value!r} must be one of {', '.join(allowed)}")
    if not t.lr > 0 or math.isinf(t.lr):
        problems.append(f"train.lr={t.lr} must be a finite number > 0")
    if not 0 <= t.min_lr <= t.lr:
        problems.append(f"train.min_lr={t.min_lr} must be in [0, train.lr={t.lr}]")
    for name, value in (("lr_warmup_steps", t.lr_warmup_steps), ("weight_decay", t.weight_decay),
                        ("clip_grad", t.clip_grad)):
        if not value >= 0:
            problems.append(f"train.{name}={value} must be >= 0")
    for name, value in (("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)):
        if not 0 <= value < 1:
            problems.append(f"train.{name}={value} must be in [0, 1)")
    if not t.adam_eps > 0:
        problems.append(f"train.adam_eps={t.adam_eps} must be > 0")
    if t.precision == "bf16" and not cuda:
        problems.append("train.precision=bf16 needs CUDA: on the CPU megatron-core's mixed-precision "
                        "optimizer is not available; use train.precision=fp32")
    return problems


def _loss_problems(cfg: RMConfig) -> list[str]:
    loss, m = cfg.loss, cfg.model
    if loss.type not in LOSS_TYPES:
        return [f"loss.type={loss.type!r} must be one of {', '.join(LOSS_TYPES)}"]
    problems = []
    if loss.type != "regression" and m.num_labels != 1:
        problems.append(f"model.num_labels={m.num_labels}: loss.type={loss.type} trains a scalar reward "
                        "(model.num_labels=1; loss.type=regression trains several attributes)")
    if not loss.centering_coef >= 0:
        problems.append(f"loss.centering_coef={loss.centering_coef} must be >= 0")
    elif loss.centering_coef > 0 and loss.type not in ("bradley_terry", "margin"):
        problems.append(f"loss.centering_coef={loss.centering_coef} applies to loss.type=bradley_terry "
                        f"or margin, not {loss.type}")
    if loss.type == "divergence":
        if cfg.data.batching != "bucket":
            problems.append("loss.type=divergence compares chosen and rejected token by token, one "
                            f"document per row: it needs data.batching=bucket (got {cfg.data.batching})")
        if cfg.parallel.sequence_parallel:
            problems.append("loss.type=divergence reads every token's value: not with "
                            "parallel.sequence_parallel=true")
    return problems


def validate(
    cfg: RMConfig, world_size: int, *, cuda: bool, te_available: bool, vocab_size: int
) -> None:
    """Raise ConfigError listing every reason `cfg` cannot run on this launch."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name, value in (("parallel.tp", p.tp), ("parallel.pp", p.pp),
                        ("train.global_batch_size", t.global_batch_size),
                        ("train.micro_batch_size", t.micro_batch_size),
                        ("train.log_interval", t.log_interval),
                        ("model.num_labels", m.num_labels),
                        ("data.pad_to_multiple_of", cfg.data.pad_to_multiple_of),
                        ("data.max_length", cfg.data.max_length),
                        ("data.preprocess_workers", cfg.data.preprocess_workers)):
        need(value >= 1, f"{name}={value} must be >= 1")
    if t.max_steps is not None:
        need(t.max_steps >= 0, f"train.max_steps={t.max_steps} must be >= 0 (0: evaluate only)")
        need(t.epochs is None, f"train.max_steps={t.max_steps} and train.epochs={t.epochs} both set; "
                               "use one (the other null)")
    need(t.epochs is None or t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1 or null")
    problems.extend(_train_problems(t, cuda))
    problems.extend(_loss_problems(cfg))
    for name, value in (("eval.interval", cfg.eval.interval), ("checkpoint.save_interval", cfg.checkpoint.save_interval),
                        ("checkpoint.keep", cfg.checkpoint.keep), ("train.max_skipped", t.max_skipped)):
        need(value >= 0, f"{name}={value} must be >= 0")
    need(not cfg.logging.wandb or importlib.util.find_spec("wandb") is not None,
         "logging.wandb=true needs the wandb package: pip install wandb")
    need(cfg.logging.peak_flops is None or cfg.logging.peak_flops > 0,
         f"logging.peak_flops={cfg.logging.peak_flops} must be > 0 or null")
    for name, value in (("model.num_query_groups", m.num_query_groups), ("model.kv_channels", m.kv_channels),
                        ("eval.micro_batch_size", cfg.eval.micro_batch_size)):
        need(value is None or value >= 1, f"{name}={value} must be >= 1 or null")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))

    model_parallel = p.tp * p.pp
    need(world_size % model_parallel == 0,
         f"world size {world_size} is not divisible by parallel.tp={p.tp} x parallel.pp={p.pp}"
         f" = {model_parallel}")
    dp = max(world_size // model_parallel, 1)
    need(m.num_layers % p.pp == 0,
         f"model.num_layers={m.num_layers} is not divisible by parallel.pp={p.pp}")
    need(m.num_attention_heads % p.tp == 0,
         f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tp={p.tp}")
    if m.kv_channels is None:
        need(m.hidden_size % m.num_attention_heads == 0,
             f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
             f"{m.num_attention_heads}; set model.kv_channels for another head size")
    groups = m.num_query_groups or m.num_attention_heads
    need(groups % p.tp == 0,
         f"model.num_query_groups={groups} is not divisible by parallel.tp={p.tp}")
    need(m.num_attention_heads % groups == 0,
         f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
         f"model.num_query_groups={groups}")
    need(m.ffn_hidden_size % p.tp == 0,
         f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={p.tp}")
    need(m.hidden_size % p.tp == 0,
         f"model.hidden_size={m.hidden_size} is not divisible by parallel.tp={p.tp} "
         "(the reward head is split along the hidden dimension)")
    padded = padded_vocab_size(vocab_size, m)
    need(padded % p.tp == 0,
         f"padded vocabulary {padded} (tokenizer {vocab_size}, multiple of "
         f"model.make_vocab_size_divisible_by={m.make_vocab_size_divisible_by}) "
         f"is not divisible by parallel.tp={p.tp}")
    if t.max_steps:
        need(t.lr_warmup_steps < t.max_steps,
             f"train.lr_warmup_steps={t.lr_warmup_steps} must be below train.max_steps={t.max_steps}")
    if cfg.data.batching == "pack":
        # A packed micro-batch holds as many groups as fit; only the ranks' shares must be equal.
        need(t.global_batch_size % dp == 0,
             f"train.global_batch_size={t.global_batch_size} is not divisible by the "
             f"data-parallel size {dp}")
    else:
        per_step = t.micro_batch_size * dp
        need(t.global_batch_size % per_step == 0,
             f"train.global_batch_size={t.global_batch_size} is not divisible by "
             f"train.micro_batch_size={t.micro_batch_size} x data-parallel size {dp} = {per_step}")
    problems.extend(_data_problems(cfg.data))
    need(cfg.data.max_length <= m.max_sequence_length,
         f"data.max_length={cfg.data.max_length} exceeds "
         f"model.max_sequence_length={m.max_sequence_length}")
    need(m.normalization in ("RMSNorm", "LayerNorm"),
         f"model.normalization={m.normalization!r} must be RMSNorm or LayerNorm")
    need(m.activation in ("swiglu", "gelu"),
         f"model.activation={m.activation!r} must be swiglu or gelu")
    need(m.position_embedding_type in ("rope", "learned_absolute"),
         f"model.position_embedding_type={m.position_embedding_type!r} must be rope or "
         "learned_absolute")
    need(m.family in FAMILIES, f"model.family={m.family!r} must be one of {', '.join(FAMILIES)}")
    if m.vocab_size is not None:
        need(m.vocab_size >= vocab_size,
             f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's {vocab_size} tokens "
             f"({m.tokenizer})")
    if m.rope_scaling is not None:
        need(m.rope_scaling.rope_type in ROPE_SCALING_TYPES,
             f"model.rope_scaling.rope_type={m.rope_scaling.rope_type!r} must be one of "
             f"{', '.join(ROPE_SCALING_TYPES)}")
    if m.sliding_window is not None:
        need(cfg.data.max_length <= m.sliding_window,
             f"data.max_length={cfg.data.max_length} exceeds model.sliding_window={m.sliding_window}:"
             " attention here is not windowed, so documents must fit the window")
    need(m.transformer_impl in TRANSFORMER_IMPLS,
         f"model.transformer_impl={m.transformer_impl!r} must be one of {', '.join(TRANSFORMER_IMPLS)}")
    if m.transformer_impl == "transformer_engine":
        need(cuda and te_available,
             "model.transformer_impl=transformer_engine needs CUDA and an importable "
             f"transformer_engine (cuda={cuda}, transformer_engine={te_available})")

    # Paths that megatron-core 0.16 only implements for CUDA tensors.
    if p.use_distributed_optimizer:
        need(cuda, "parallel.use_distributed_optimizer=true needs CUDA: megatron-core 0.16's "
                   "distributed optimizer rejects CPU tensors; use the default optimizer on CPU")
    if p.sequence_parallel:
        need(cuda and te_available and m.transformer_impl in ("auto", "transformer_engine"),
             "parallel.sequence_parallel=true needs CUDA and TransformerEngine (its norms handle "
             f"sequence-split activations; cuda={cuda}, transformer_engine={te_available}, "
             f"model.transformer_impl={m.transformer_impl})")
        need(p.tp > 1, f"parallel.sequence_parallel=true needs parallel.tp > 1 (got {p.tp})")

    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
