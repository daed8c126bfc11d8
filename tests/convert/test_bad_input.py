"""Bad sources and checkpoints stop with a message naming the file or field, and leave no output."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from hydra import compose, initialize_config_dir

from megatron_rm import cli
from megatron_rm.convert import export_hf, import_hf
from megatron_rm.errors import CheckpointError, ConfigError, UsageError
from megatron_rm.training.checks import validate
from tests.conftest import PYTHON, REPO, run_command
from tests.convert.hf_models import save_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    save_model("llama", folder, max_shard_size="150KB")
    return folder


def _copy(good, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    for path in good.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _edit_config(folder, drop=(), **fields):
    config = json.loads((folder / "config.json").read_text())
    for name in drop:
        config.pop(name, None)
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def _first_shard(folder):
    return sorted(folder.glob("model-*.safetensors"))[0]


def _truncate(folder):
    shard = _first_shard(folder)
    shard.write_bytes(shard.read_bytes()[:-100])


def _int8_tensor(folder):
    """Rewrite the first shard's dtype tag: the same bytes, read as int8 (a quantized tensor)."""
    shard = _first_shard(folder)
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = next(n for n in header if n != "__metadata__")
    header[name]["dtype"] = "I8"
    header[name]["shape"] = [header[name]["data_offsets"][1] - header[name]["data_offsets"][0]]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    shard.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])


CASES = {
    "missing_config": (lambda f: (f / "config.json").unlink(), "config.json: missing"),
    "missing_shard": (lambda f: _first_shard(f).unlink(), "model-00001-of-"),
    "truncated_shard": (_truncate, "truncated"),
    "unknown_model_type": (lambda f: _edit_config(f, model_type="gpt2"), "model_type='gpt2'"),
    # RoPE in transformers 5's spelling (what save_model writes), in 4.x's, or in both.
    "unsupported_rope_type": (lambda f: _edit_config(f, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                          "rope_theta": 1e4}),
                              "rope_parameters.rope_type='yarn'"),
    "unsupported_rope_scaling": (lambda f: _edit_config(f, drop=["rope_parameters"], rope_theta=1e4,
                                                        rope_scaling={"rope_type": "yarn", "factor": 4.0}),
                                 "rope_scaling.rope_type='yarn'"),
    "unread_rope_parameter": (lambda f: _edit_config(f, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                          "rope_theta": 1e4, "beta_fast": 32}),
                              "rope_parameters.beta_fast=32 is not supported with rope_type='linear'"),
    "rope_in_neither_spelling": (lambda f: _edit_config(f, drop=["rope_parameters", "rope_theta", "rope_scaling"]),
                                 "no RoPE base: rope_parameters.rope_theta (transformers 5) and rope_theta (4.x)"),
    "rope_spellings_disagree": (lambda f: _edit_config(f, rope_theta=1e4),
                                "rope_parameters.rope_theta=500000.0 and rope_theta=10000.0 disagree"),
    "rope_scalings_disagree": (lambda f: _edit_config(f, rope_scaling={"rope_type": "linear", "factor": 8.0}),
                               "and rope_scaling={'rope_type': 'linear', 'factor': 8.0} disagree"),
    "rope_per_layer_type": (lambda f: _edit_config(f, rope_parameters={"full_attention": {"rope_theta": 1e4}}),
                            "is given per layer type"),
    "sliding_layers": (lambda f: _edit_config(f, layer_types=["sliding_attention", "full_attention"]),
                       "layer_types=['sliding_attention', 'full_attention']"),
    "shape_not_stated": (lambda f: _edit_config(f, drop=["hidden_size", "num_attention_heads"]),
                         "hidden_size, num_attention_heads missing: the model's shape is not in the file"),
    "other_activation": (lambda f: _edit_config(f, hidden_act="gelu"), "hidden_act='gelu'"),
    "weights_for_another_config": (lambda f: _edit_config(f, num_hidden_layers=3), "missing ['model.layers.2"),
    "quantized_tensor": (_int8_tensor, "not floating point"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_source_is_refused_and_leaves_no_output(case, good, single_rank, tmp_path):
    folder = _copy(good, tmp_path)
    break_it, message = CASES[case]
    break_it(folder)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        import_hf(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_num_labels_must_match_an_existing_score_head(good, single_rank, tmp_path):
    with pytest.raises(CheckpointError, match="score head of 1 labels"):
        import_hf(good, tmp_path / "out", num_labels=2)


def test_a_token_head_has_2_or_3_classes_and_a_classifier_keeps_its_head(single_rank, tmp_path):
    save_model("mistral", tmp_path / "token4", "token_classification", num_labels=4)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'token4' / 'config.json'}: num_labels=4"):
        import_hf(tmp_path / "token4", tmp_path / "out")
    save_model("qwen2", tmp_path / "causal_lm", "causal_lm")
    with pytest.raises(CheckpointError, match="--num-labels 1: a token head has 2 or 3 classes"):
        import_hf(tmp_path / "causal_lm", tmp_path / "out", head="token", num_labels=1)
    save_model("qwen2", tmp_path / "sequence", num_labels=2)
    with pytest.raises(CheckpointError, match=f"--head token: {tmp_path / 'sequence'} is a sequence classifier"):
        import_hf(tmp_path / "sequence", tmp_path / "out", head="token")
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_never_overwritten(good, single_rank, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        import_hf(good, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_fp16_sources_need_an_explicit_dtype(single_rank, tmp_path):
    save_model("qwen2", tmp_path / "hf", dtype=torch.float16)
    with pytest.raises(CheckpointError, match="--dtype fp32 or --dtype bf16"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    import_hf(tmp_path / "hf", tmp_path / "out", dtype="fp32")  # fp16 -> fp32 is exact


def test_a_folder_that_is_not_our_checkpoint_is_refused(good, single_rank, tmp_path):
    with pytest.raises(CheckpointError, match="not a megatron-rm checkpoint"):
        export_hf(good, tmp_path / "out")


def _compose(overrides):
    cli.register_schema()
    with initialize_config_dir(config_dir=cli.CONF_DIR, version_base="1.3"):
        return cli.to_config(compose("train_rm", overrides=overrides), overrides)


def test_training_takes_the_checkpoints_model_and_refuses_impossible_layouts(good, single_rank, tmp_path):
    import_hf(good, tmp_path / "ckpt")
    cfg = _compose([f"checkpoint.load={tmp_path / 'ckpt'}", "model.hidden_dropout=0.1", "parallel.tp=4"])
    hf_vocab = json.loads((good / "config.json").read_text())["vocab_size"]
    assert (cfg.model.num_query_groups, cfg.model.kv_channels, cfg.model.vocab_size) == (2, 24, hf_vocab)
    assert cfg.model.rope_scaling.original_max_position_embeddings == 64
    assert cfg.model.hidden_dropout == 0.1 and cfg.model.tokenizer == str((tmp_path / "ckpt" / "tokenizer").resolve())
    with pytest.raises(ConfigError, match="model.num_query_groups=2 is not divisible by parallel.tp=4"):
        validate(cfg, 4, cuda=False, te_available=False, vocab_size=284)
    with pytest.raises(UsageError, match="the checkpoint carries its model"):
        _compose([f"checkpoint.load={tmp_path / 'ckpt'}", "model=tiny"])


@pytest.mark.slow
def test_command_lines(good, tmp_path):
    to_megatron = str(REPO / "tools" / "convert_hf_to_megatron.py")
    to_hf = str(REPO / "tools" / "convert_megatron_to_hf.py")
    result = run_command([PYTHON, to_megatron, "--hf-dir", str(good), "--out-dir", str(tmp_path / "m"),
                          "--dtype", "bf16"])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_command([PYTHON, to_hf, "--megatron-dir", str(tmp_path / "m"), "--out-dir", str(tmp_path / "h")])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "h" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    result = run_command([PYTHON, to_hf, "--megatron-dir", str(good), "--out-dir", str(tmp_path / "x")])
    assert result.returncode == 2 and "error: " in result.stderr and "not a megatron-rm checkpoint" in result.stderr
    result = run_command([PYTHON, to_megatron, "--hf-dir", str(good), "--out-dir", str(tmp_path / "y"),
                          "--dtype", "fp16"])
    assert result.returncode == 2 and "invalid choice: 'fp16'" in result.stderr
