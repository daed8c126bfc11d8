"""Tests for RMConfig validation (megatron_rm.config) and the Hydra schema (megatron_rm.cli)."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

import megatron_rm.cli
from megatron_rm.config import ModelConfig, RMConfig
from megatron_rm.errors import ConfigError
from megatron_rm.training.checks import validate

VOCAB = 327  # the demo tokenizer's size


def check(cfg: RMConfig, world_size: int = 1, *, cuda: bool = False, te_available: bool = False,
          vocab_size: int = VOCAB) -> None:
    validate(cfg, world_size, cuda=cuda, te_available=te_available, vocab_size=vocab_size)


def problems(cfg: RMConfig, world_size: int = 1, **kwargs) -> list[str]:
    """The problem lines of the ConfigError that `cfg` must raise."""
    with pytest.raises(ConfigError) as info:
        check(cfg, world_size, **kwargs)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("invalid configuration")
    return [line.strip() for line in lines[1:]]


def the_problem(lines: list[str], *needles: str) -> str:
    """The one problem line that mentions every needle."""
    matching = [line for line in lines if all(n in line for n in needles)]
    assert len(matching) == 1, f"expected one line with {needles} in {lines}"
    return matching[0]


def make(**groups) -> RMConfig:
    """RMConfig with per-group field overrides, e.g. make(parallel=dict(tp=2))."""
    cfg = RMConfig()
    for group, fields in groups.items():
        setattr(cfg, group, dataclasses.replace(getattr(cfg, group), **fields))
    return cfg


# --- valid configurations ---------------------------------------------------------------

def test_default_config_is_valid_on_one_cpu_rank():
    check(RMConfig(), 1, cuda=False, te_available=False, vocab_size=VOCAB)


def test_valid_hybrid_layout():
    # world 8 = tp 2 x pp 2 x dp 2; 32 pairs = 8 per micro-batch x dp 2 x 2 micro-batches
    check(make(parallel=dict(tp=2, pp=2)), 8)


def test_max_steps_zero_is_allowed():
    check(make(train=dict(max_steps=0)))


# --- layout problems ---------------------------------------------------------------------

def test_tp_times_pp_not_dividing_world_size():
    lines = problems(make(parallel=dict(tp=3, pp=2)), 8)
    line = the_problem(lines, "world size")
    for value in ("8", "tp=3", "pp=2", str(3 * 2)):
        assert value in line


def test_num_layers_not_divisible_by_pp():
    lines = problems(make(model=dict(num_layers=3), parallel=dict(pp=2)), 2)
    assert lines == [the_problem(lines, "model.num_layers=3", "parallel.pp=2")]


def test_num_attention_heads_not_divisible_by_tp():
    cfg = make(model=dict(num_attention_heads=6, hidden_size=48), parallel=dict(tp=4))
    lines = problems(cfg, 4)
    the_problem(lines, "model.num_attention_heads=6", "is not divisible by parallel.tp=4")


def test_num_query_groups_not_divisible_by_tp():
    cfg = make(model=dict(num_attention_heads=4, num_query_groups=2), parallel=dict(tp=4))
    lines = problems(cfg, 4)
    assert lines == [the_problem(lines, "model.num_query_groups=2", "parallel.tp=4")]


def test_num_attention_heads_not_divisible_by_num_query_groups():
    lines = problems(make(model=dict(num_attention_heads=4, num_query_groups=3)))
    the_problem(lines, "model.num_attention_heads=4", "model.num_query_groups=3")


def test_global_batch_not_divisible_by_micro_batch_times_dp():
    # world 4 at tp=pp=1 is dp 4: a step takes multiples of 8 x 4 = 32 pairs
    cfg = make(train=dict(global_batch_size=48, micro_batch_size=8))
    lines = problems(cfg, 4)
    line = the_problem(lines, "train.global_batch_size=48")
    for value in ("train.micro_batch_size=8", "4", str(8 * 4)):
        assert value in line
    assert len(lines) == 1


def test_padded_vocab_not_divisible_by_tp():
    cfg = make(model=dict(make_vocab_size_divisible_by=30, num_attention_heads=8), parallel=dict(tp=8))
    padded = math.ceil(VOCAB / 30) * 30  # 330, and 330 % 8 != 0
    lines = problems(cfg, 8)
    line = the_problem(lines, "padded vocabulary")
    for value in (str(padded), str(VOCAB), "parallel.tp=8", "make_vocab_size_divisible_by=30"):
        assert value in line
    assert len(lines) == 1


def test_padded_vocab_divisible_by_tp_is_fine():
    # the default multiple of 128 pads 327 to 384, which tp=8 divides
    check(make(model=dict(num_attention_heads=8), parallel=dict(tp=8)), 8)


def test_ffn_hidden_size_not_divisible_by_tp():
    lines = problems(make(model=dict(ffn_hidden_size=250), parallel=dict(tp=4)), 4)
    assert lines == [the_problem(lines, "model.ffn_hidden_size=250", "parallel.tp=4")]


def test_hidden_size_not_divisible_by_tp():
    cfg = make(model=dict(hidden_size=66, num_attention_heads=2), parallel=dict(tp=4))
    lines = problems(cfg, 4)
    the_problem(lines, "model.hidden_size=66", "parallel.tp=4")


def test_several_problems_are_listed_in_one_error():
    cfg = make(
        model=dict(num_layers=3, ffn_hidden_size=250),
        parallel=dict(tp=4, pp=2),
        train=dict(global_batch_size=30, micro_batch_size=8),
    )
    lines = problems(cfg, 8)
    the_problem(lines, "model.num_layers=3", "parallel.pp=2")
    the_problem(lines, "model.ffn_hidden_size=250", "parallel.tp=4")
    the_problem(lines, "train.global_batch_size=30", "train.micro_batch_size=8")
    assert len(lines) == 3


@pytest.mark.parametrize("group, name", [("parallel", "tp"), ("parallel", "pp"),
                                         ("train", "global_batch_size"), ("train", "micro_batch_size"),
                                         ("data", "pad_to_multiple_of"), ("model", "num_query_groups"),
                                         ("model", "kv_channels"), ("eval", "micro_batch_size")])
def test_sizes_below_one_are_refused(group, name):
    lines = problems(make(**{group: {name: 0}}))
    the_problem(lines, f"{group}.{name}=0", ">= 1")


def test_head_size_must_divide_hidden_unless_kv_channels_is_set():
    the_problem(problems(make(model={"hidden_size": 66, "num_attention_heads": 4, "ffn_hidden_size": 176})),
                "model.hidden_size=66", "model.num_attention_heads=4", "kv_channels")
    check(make(model={"hidden_size": 66, "num_attention_heads": 4, "kv_channels": 16}))


def test_max_length_above_max_sequence_length():
    lines = problems(make(data=dict(max_length=600), model=dict(max_sequence_length=512)))
    assert lines == [the_problem(lines, "data.max_length=600", "model.max_sequence_length=512")]


# --- CUDA-only features on CPU -------------------------------------------------------------

def test_distributed_optimizer_refused_on_cpu():
    lines = problems(make(parallel=dict(use_distributed_optimizer=True)), cuda=False, te_available=True)
    assert lines == [the_problem(lines, "parallel.use_distributed_optimizer", "CUDA")]


def test_distributed_optimizer_allowed_with_cuda():
    check(make(parallel=dict(use_distributed_optimizer=True)), cuda=True, te_available=False)


@pytest.mark.parametrize("cuda, te_available", [(False, True), (True, False), (False, False)])
def test_sequence_parallel_needs_cuda_and_transformer_engine(cuda, te_available):
    cfg = make(parallel=dict(tp=2, sequence_parallel=True))
    lines = problems(cfg, 2, cuda=cuda, te_available=te_available)
    line = the_problem(lines, "parallel.sequence_parallel")
    assert "TransformerEngine" in line
    assert f"cuda={cuda}" in line and f"transformer_engine={te_available}" in line
    assert len(lines) == 1


def test_sequence_parallel_refused_with_local_transformer_impl():
    cfg = make(parallel=dict(tp=2, sequence_parallel=True), model=dict(transformer_impl="local"))
    lines = problems(cfg, 2, cuda=True, te_available=True)
    the_problem(lines, "parallel.sequence_parallel", "model.transformer_impl=local")


def test_sequence_parallel_needs_tensor_parallelism():
    cfg = make(parallel=dict(tp=1, sequence_parallel=True))
    lines = problems(cfg, 1, cuda=True, te_available=True)
    assert lines == [the_problem(lines, "parallel.sequence_parallel", "parallel.tp > 1")]


def test_sequence_parallel_allowed_with_cuda_and_transformer_engine():
    check(make(parallel=dict(tp=2, sequence_parallel=True)), 2, cuda=True, te_available=True)


@pytest.mark.parametrize("cuda, te_available", [(True, False), (False, True), (False, False)])
def test_transformer_engine_impl_needs_cuda_and_te(cuda, te_available):
    cfg = make(model=dict(transformer_impl="transformer_engine"))
    lines = problems(cfg, cuda=cuda, te_available=te_available)
    line = the_problem(lines, "model.transformer_impl=transformer_engine")
    assert f"cuda={cuda}" in line and f"transformer_engine={te_available}" in line


def test_transformer_engine_impl_allowed_with_cuda_and_te():
    check(make(model=dict(transformer_impl="transformer_engine")), cuda=True, te_available=True)


# --- training schedule --------------------------------------------------------------------------

def test_negative_max_steps_is_refused():
    lines = problems(make(train=dict(max_steps=-1)))
    the_problem(lines, "train.max_steps=-1", ">= 0")


@pytest.mark.parametrize("warmup", [10, 11])
def test_warmup_at_or_beyond_max_steps_is_refused(warmup):
    lines = problems(make(train=dict(max_steps=10, lr_warmup_steps=warmup)))
    assert lines == [the_problem(lines, f"train.lr_warmup_steps={warmup}", "train.max_steps=10")]


def test_warmup_below_max_steps_is_fine():
    check(make(train=dict(max_steps=10, lr_warmup_steps=9)))


def test_negative_warmup_is_refused():
    lines = problems(make(train=dict(lr_warmup_steps=-1)))
    the_problem(lines, "train.lr_warmup_steps=-1")


@pytest.mark.parametrize("field, value, needle", [
    ("lr", -1e-4, "train.lr=-0.0001 must be a finite number >= 0"),
    ("lr", float("inf"), "train.lr=inf must be a finite number >= 0"),
    ("min_lr", 1.0, "train.min_lr=1.0 must be in [0, train.lr="),
    ("optimizer", "sgd", "train.optimizer='sgd' must be one of adamw, adam"),
    ("lr_decay_style", "step", "train.lr_decay_style='step' must be one of cosine, linear, constant"),
    ("recompute", "all", "train.recompute='all' must be one of none, selective, full"),
    ("adam_beta2", 1.0, "train.adam_beta2=1.0 must be in [0, 1)"),
    ("clip_grad", -1.0, "train.clip_grad=-1.0 must be >= 0"),
    ("max_skipped", -1, "train.max_skipped=-1 must be >= 0"),
    ("epochs", 0, "train.epochs=0 must be >= 1"),
    ("weight_decay", float("nan"), "train.weight_decay=nan must be a finite number"),
])
def test_training_settings_are_checked(field, value, needle):
    the_problem(problems(make(train={field: value})), needle)


def test_max_steps_and_epochs_are_exclusive():
    the_problem(problems(make(train=dict(max_steps=10, epochs=2))), "train.max_steps=10", "train.epochs=2")


def test_bf16_needs_cuda():
    the_problem(problems(make(train=dict(precision="bf16"))), "train.precision=bf16 needs CUDA")


@pytest.mark.parametrize("groups, needle", [
    (dict(loss=dict(type="hinge")), "loss.type='hinge' must be one of bradley_terry, margin, plackett_luce"),
    (dict(loss=dict(type="plackett_luce", centering_coef=0.1)), "loss.centering_coef=0.1 applies to"),
    (dict(loss=dict(centering_coef=-1.0)), "loss.centering_coef=-1.0 must be >= 0"),
    (dict(loss=dict(type="divergence"), data=dict(batching="pack")), "loss.type=divergence"),
    (dict(model=dict(num_labels=3)), "model.num_labels=3: loss.type=bradley_terry trains a scalar reward"),
])
def test_loss_settings_are_checked(groups, needle):
    the_problem(problems(make(**groups)), needle)


def test_regression_trains_several_labels():
    check(make(loss=dict(type="regression"), model=dict(num_labels=3)))


# --- Hydra schema -----------------------------------------------------------------------------

def compose_train(overrides):
    megatron_rm.cli.register_schema()
    with initialize_config_dir(config_dir=megatron_rm.cli.CONF_DIR, version_base="1.3"):
        return compose("train_rm", overrides=overrides)


def test_hydra_overrides_become_typed_rm_config():
    cfg = megatron_rm.cli.to_config(compose_train(["parallel.tp=2", "train.max_steps=7"]))
    assert isinstance(cfg, RMConfig)
    assert cfg.parallel.tp == 2
    assert cfg.train.max_steps == 7
    assert isinstance(cfg.model, ModelConfig)
    tiny = yaml.safe_load((Path(megatron_rm.cli.CONF_DIR) / "model" / "tiny.yaml").read_text())
    assert tiny["num_query_groups"] == 2
    for name, value in tiny.items():
        assert getattr(cfg.model, name) == value, name
    # fields absent from tiny.yaml keep the dataclass defaults
    assert cfg.model.transformer_impl == ModelConfig().transformer_impl


def test_composed_default_config_validates():
    cfg = megatron_rm.cli.to_config(compose_train([]))
    check(cfg, 1, vocab_size=VOCAB)


@pytest.mark.parametrize("steps", [1, 3, 20])
def test_shipped_defaults_run_at_any_length(steps):
    """The shipped warm-up is a fraction of the run, so a short run needs no other override."""
    cfg = megatron_rm.cli.to_config(compose_train([f"train.max_steps={steps}"]))
    check(cfg, 1, vocab_size=VOCAB)
    assert cfg.train.lr_warmup_steps is None and 0 <= cfg.train.warmup_steps(steps) < steps


def test_an_explicit_warmup_not_below_the_run_is_still_an_error():
    cfg = megatron_rm.cli.to_config(compose_train(["train.max_steps=3", "train.lr_warmup_steps=20"]))
    the_problem(problems(cfg), "train.lr_warmup_steps=20 must be below train.max_steps=3")


def test_lr_zero_is_a_valid_learning_rate():
    check(make(train=dict(lr=0.0, min_lr=0.0)))
    the_problem(problems(make(train=dict(lr=0.0, min_lr=1e-5))), "train.min_lr=1e-05 must be in [0, train.lr=0.0]")


COMPOSE_ERRORS = (ConfigCompositionException, OmegaConfBaseException)


def test_hydra_rejects_misspelt_key():
    with pytest.raises(COMPOSE_ERRORS) as info:
        compose_train(["train.max_stepz=3"])
    assert "max_stepz" in str(info.value)


def test_hydra_rejects_wrongly_typed_value():
    with pytest.raises(COMPOSE_ERRORS) as info:
        compose_train(["train.max_steps=abc"])
    assert "train.max_steps" in str(info.value)
    assert "abc" in str(info.value)


@pytest.mark.parametrize("field, value, needle", [
    ("truncation", "middle", "data.truncation='middle' must be one of drop, truncate_prompt, truncate_response"),
    ("on_invalid", "warn", "data.on_invalid='warn' must be one of error, skip"),
    ("batching", "sorted", "data.batching='sorted' must be one of bucket, pack"),
    ("eval_fraction", 1.0, "data.eval_fraction=1.0 must be in [0, 1)"),
    ("bucket_window", -1, "data.bucket_window=-1 must be >= 0"),
    ("pack_length", 16, "data.pack_length=16 must be >= data.max_length=128"),
])
def test_data_settings_are_checked(field, value, needle):
    cfg = make(data={"eval_path": None, field: value})
    the_problem(problems(cfg), needle)


def test_eval_fraction_and_eval_path_are_exclusive():
    the_problem(problems(make(data={"eval_fraction": 0.1})), "data.eval_fraction=0.1", "use one")


def test_packing_needs_only_equal_rank_shares():
    cfg = make(train={"global_batch_size": 12, "micro_batch_size": 8}, data={"batching": "pack"})
    check(cfg, world_size=4)
    the_problem(problems(cfg, world_size=8), "not divisible by the data-parallel size 8")
