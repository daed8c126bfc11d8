"""Reward models and policies: each checkpoint says which it holds, the wrong kind is refused by
name wherever a model is exported or loaded, and a policy's padding rows are zeros."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_rm.config import ParallelConfig
from megatron_rm.convert import export_hf, import_hf, megatron_io
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import METADATA, model_entry, read_metadata
from megatron_rm.errors import CheckpointError
from megatron_rm.loading.models import load_policy
from megatron_rm.loading.reward import load_model
from megatron_rm.model import build_reward_model
from tests.conftest import PYTHON, REPO, run_command
from tests.convert.hf_models import save_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, single_rank):
    """A causal LM (separate lm_head) and a sequence classifier, and each imported as its kind."""
    root = tmp_path_factory.mktemp("kinds")
    save_model("mistral", root / "causal_lm", "causal_lm")
    save_model("qwen2", root / "classifier")
    import_hf(root / "causal_lm", root / "policy", kind="policy")
    import_hf(root / "classifier", root / "reward")
    return root


def test_checkpoints_record_their_kind_and_old_ones_read_as_reward(folders, tmp_path):
    assert read_metadata(folders / "policy")["models"]["model"]["kind"] == "policy"
    assert read_metadata(folders / "reward")["models"]["model"]["kind"] == "reward"
    # A checkpoint written before policies existed has no kind: it holds a reward model.
    old = tmp_path / "old"
    old.mkdir()
    for file in (folders / "reward").rglob("*"):
        if file.is_file():
            (old / file.relative_to(folders / "reward")).parent.mkdir(parents=True, exist_ok=True)
            (old / file.relative_to(folders / "reward")).write_bytes(file.read_bytes())
    metadata = json.loads((old / METADATA).read_text())
    del metadata["models"]["model"]["kind"]
    (old / METADATA).write_text(json.dumps(metadata))
    assert model_entry(old, read_metadata(old)).kind == "reward"
    load_model(old)  # and loads as one


def test_a_policy_is_not_exported_or_loaded_as_a_reward_model(folders, tmp_path):
    with pytest.raises(CheckpointError, match=f"{folders / 'policy'}: its model is a policy model, not a reward"):
        export_hf(folders / "policy", tmp_path / "out", kind="reward")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match=f"{folders / 'policy'}: its model is a policy model, not a reward"):
        load_model(folders / "policy")


def test_a_reward_model_is_not_exported_or_loaded_as_a_policy(folders, tmp_path):
    with pytest.raises(CheckpointError, match=f"{folders / 'reward'}: its model is a reward model, not a policy"):
        export_hf(folders / "reward", tmp_path / "out", kind="policy")
    with pytest.raises(CheckpointError, match=f"{folders / 'reward'}: its model is a reward model, not a policy"):
        load_policy(folders / "reward")
    with pytest.raises(CheckpointError, match=f"{folders / 'classifier'}: holds a reward model"):
        load_policy(folders / "classifier")
    with pytest.raises(CheckpointError, match=f"{folders / 'classifier'}: holds a reward model"):
        import_hf(folders / "classifier", tmp_path / "out", kind="policy")
    assert not (tmp_path / "out").exists()


def test_checkpoint_load_refuses_a_model_of_the_other_kind(folders):
    entry = model_entry(folders / "policy", read_metadata(folders / "policy"))
    model = build_reward_model(entry.config, ParallelConfig(), entry.padded_vocab_size)
    with pytest.raises(CheckpointError, match="its model is a policy model, not a reward model"):
        checkpoint.load(folders / "policy", {"model": checkpoint.ModelState(model, entry.config,
                                                                             entry.padded_vocab_size)})


def test_each_checkpoint_exports_as_its_own_kind(folders, tmp_path):
    export_hf(folders / "policy", tmp_path / "policy")
    export_hf(folders / "reward", tmp_path / "reward")
    architectures = {name: json.loads((tmp_path / name / "config.json").read_text())["architectures"]
                     for name in ("policy", "reward")}
    assert architectures == {"policy": ["MistralForCausalLM"], "reward": ["Qwen2ForSequenceClassification"]}


def test_a_causal_lm_without_its_head_is_not_a_policy(folders, tmp_path):
    folder = tmp_path / "headless"
    folder.mkdir()
    for file in (folders / "causal_lm").iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    with pytest.raises(CheckpointError, match=f"{folder}: no lm_head.weight and tie_word_embeddings is false"):
        import_hf(folder, tmp_path / "out", kind="policy")
    with pytest.raises(CheckpointError, match=f"{folder}: no lm_head.weight"):
        load_policy(folder)
    import_hf(folder, tmp_path / "reward")  # the trunk still makes a reward model


def test_a_policy_import_pads_the_vocabulary_with_zero_rows(folders):
    directory = folders / "policy"
    entry = model_entry(directory, read_metadata(directory))
    source = load_file(folders / "causal_lm" / "model.safetensors")
    weights = megatron_io.load(directory, entry.config, entry.padded_vocab_size, torch.float32, entry.prefix,
                               "policy")
    rows = entry.config.vocab_size
    for ours, theirs in (("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                         ("output_layer.weight", "lm_head.weight")):
        assert weights[ours].shape == (entry.padded_vocab_size, 64) and entry.padded_vocab_size > rows
        assert torch.equal(weights[ours][:rows], source[theirs]) and not weights[ours][rows:].any()


def test_reward_options_are_refused_for_a_policy(folders, tmp_path):
    for option in ({"num_labels": 2}, {"head": "token"}):
        with pytest.raises(CheckpointError, match="--num-labels, --head and --head-init-std describe a reward head"):
            import_hf(folders / "causal_lm", tmp_path / "out", kind="policy", **option)


@pytest.mark.slow
def test_command_lines_take_the_model_kind_and_head(folders, tmp_path):
    to_megatron = str(REPO / "tools" / "convert_hf_to_megatron.py")
    to_hf = str(REPO / "tools" / "convert_megatron_to_hf.py")
    result = run_command([PYTHON, to_megatron, "--head", "token", "--num-labels", "3", "--hf-dir",
                          str(folders / "causal_lm"), "--out-dir", str(tmp_path / "t")])
    assert result.returncode == 0, result.stderr[-3000:]
    config = read_metadata(tmp_path / "t")["models"]["model"]["config"]
    assert (config["head"], config["num_labels"]) == ("token", 3)
    result = run_command([PYTHON, to_megatron, "--model-kind", "policy", "--hf-dir", str(folders / "causal_lm"),
                          "--out-dir", str(tmp_path / "m")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_metadata(tmp_path / "m")["models"]["model"]["kind"] == "policy"
    result = run_command([PYTHON, to_hf, "--model-kind", "reward", "--megatron-dir", str(tmp_path / "m"),
                          "--out-dir", str(tmp_path / "h")])
    assert result.returncode == 2 and "is a policy model, not a reward model" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "h").exists()
