"""NeMo-Aligner `.nemo` import: files written from our own models as NeMo-Aligner lays them out
(nemo_files.py names the NeMo and NeMo-Aligner sources followed) import to checkpoints that score
and compute bit for bit as the models they came from, whatever the archive form and the
tensor-parallel size they were saved at; the reward head's settings survive; what cannot be
reproduced is refused by name; and NeMo is never imported."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tarfile

import pytest
import torch
import transformers
import yaml
from tokenizers.processors import TemplateProcessing

from megatron_rm.config import POLICY, REWARD, ParallelConfig, padded_vocab_size
from megatron_rm.convert import export_hf, import_nemo, megatron_io
from megatron_rm.core import checkpoint
from megatron_rm.core.checkpoint_files import model_entry, read_metadata
from megatron_rm.data import document_batch, load_tokenizer, save_tokenizer
from megatron_rm.errors import CheckpointError
from megatron_rm.loading.models import load_policy
from megatron_rm.loading.reward import load_model
from megatron_rm.model import build_policy_model, build_reward_model
from megatron_rm.model.policy import forward_logits
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.scoring.scorer import Scorer
from tests.conftest import PYTHON, REPO, run_command, tiny_model_config, torchrun
from tests.convert.nemo_files import whole_tensors, write_nemo

TEXTS = [("User: Name 2 colors.\nAssistant:", " 1. teal 2. blue"), ("", "a lone response"),
         ("User: Write 3 fruits.", " 1. fig")]
WEIGHTS = [0.3, 0.7]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, single_rank):
    """Our checkpoints of a reward model, a two-attribute reward model (a bias drawn) and a policy."""
    root = tmp_path_factory.mktemp("nemo")
    cfg = tiny_model_config()
    vocab = len(load_tokenizer(cfg.tokenizer))

    def save(name, kind, seed, **fields):
        config = dataclasses.replace(cfg, **fields)
        torch.manual_seed(seed)
        model = (build_reward_model if kind == REWARD else build_policy_model)(config, ParallelConfig(), vocab)
        if config.head_bias:
            model.reward_head.bias.data.normal_()
        state = checkpoint.ModelState(model, config, padded_vocab_size(vocab, config), kind=kind)
        return checkpoint.save(root / name, 0, {"model": state})

    return {"reward": save("reward", REWARD, 1), "policy": save("policy", POLICY, 3),
            "attributes": save("attributes", REWARD, 2, num_labels=2, head_bias=True)}


def _scorer(path) -> Scorer:
    return Scorer(load_model(path))


def _rewards(path) -> torch.Tensor:
    scorer = _scorer(path)
    return scorer.score([one.ids for one in scorer.encoder.texts(TEXTS)])


def _import(nemo, out, source, **options):
    return import_nemo(nemo, out, tokenizer_dir=source / "tokenizer", **options)


@pytest.mark.parametrize("form, head_extra_state", [("tar", True), ("tar.gz", True), ("folder", False)])
def test_a_reward_model_imports_bit_for_bit(sources, tmp_path, form, head_extra_state):
    # divisible_by 100: NeMo's 400 embedding rows are cut to our 384; the folder has no rm_head._extra_state
    nemo = write_nemo(sources["reward"], tmp_path / f"rm.{form}", form=form, divisible_by=100,
                      head_extra_state=head_extra_state)
    _import(nemo, tmp_path / "out", sources["reward"])
    entry = model_entry(tmp_path / "out", read_metadata(tmp_path / "out"))
    assert entry.kind == REWARD and entry.config.num_labels == 1 and entry.config.head_bias
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))
    assert not [name for name in sys.modules if name == "nemo" or name.startswith("nemo.")]


def test_a_file_saved_at_tp2_imports_bit_for_bit(sources, tmp_path):
    torch.save(whole_tensors(sources["reward"]), tmp_path / "whole.pt")
    torchrun(2, REPO / "tests" / "convert" / "nemo_worker.py", str(sources["reward"]), str(tmp_path / "whole.pt"),
             str(tmp_path / "rm.nemo"), "tar")
    names = _names(tmp_path / "rm.nemo")
    assert "./model_config.yaml" in names and any(n.startswith("./model_weights/") for n in names)
    assert yaml.safe_load(_member(tmp_path / "rm.nemo", "./model_config.yaml"))["tensor_model_parallel_size"] == 2
    _import(tmp_path / "rm.nemo", tmp_path / "out", sources["reward"])
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))


def test_merged_attributes_fold_into_one_reward_or_stay_labels(sources, tmp_path):
    source = sources["attributes"]
    standardization = {"enable": True, "mean": 0.5, "std": 2.0}
    merged = write_nemo(source, tmp_path / "merged", form="folder", reward_standardization=standardization,
                        regression={"num_attributes": 2, "merge_attributes": True, "attribute_weights": WEIGHTS})
    attributes = _rewards(source)
    assert attributes.shape == (len(TEXTS), 2)

    _import(merged, tmp_path / "folded", source)
    scorer = _scorer(tmp_path / "folded")
    folded = scorer.score([one.ids for one in scorer.encoder.texts(TEXTS)])
    assert folded.shape == (len(TEXTS), 1)
    torch.testing.assert_close(folded[:, 0], attributes @ torch.tensor(WEIGHTS), rtol=0, atol=1e-6)
    torch.testing.assert_close(scorer.normalized(folded), (folded - 0.5) / 2.0)

    notes = _import(merged, tmp_path / "kept", source, keep_attributes=True)
    assert torch.equal(_rewards(tmp_path / "kept"), attributes)
    assert read_metadata(tmp_path / "kept").get("reward_normalization") is None
    assert any("reward_standardization" in note for note in notes)

    unmerged = write_nemo(source, tmp_path / "unmerged", form="folder", reward_standardization=standardization)
    _import(unmerged, tmp_path / "labels", source)
    scorer = _scorer(tmp_path / "labels")
    rewards = scorer.score([one.ids for one in scorer.encoder.texts(TEXTS)])
    assert torch.equal(rewards, attributes)  # NeMo-Aligner standardises every attribute alike
    torch.testing.assert_close(scorer.normalized(rewards), (attributes - 0.5) / 2.0)


def test_one_merged_attribute_is_scaled_by_its_weight(sources, tmp_path):
    merged = write_nemo(sources["reward"], tmp_path / "merged", form="folder",
                        regression={"num_attributes": 1, "merge_attributes": True, "attribute_weights": [2.0]})
    _import(merged, tmp_path / "out", sources["reward"])
    torch.testing.assert_close(_rewards(tmp_path / "out"), 2.0 * _rewards(sources["reward"]), rtol=0, atol=1e-6)


def test_a_critic_becomes_one_value_read_at_every_token(sources, tmp_path):
    source = sources["attributes"]
    critic = write_nemo(source, tmp_path / "critic", form="folder", output_sequence=True,
                        regression={"num_attributes": 2, "merge_attributes": False, "attribute_weights": WEIGHTS})
    with pytest.raises(CheckpointError, match="a critic .* always combines"):
        _import(critic, tmp_path / "refused", source, keep_attributes=True)
    _import(critic, tmp_path / "out", source)
    assert read_metadata(tmp_path / "out")["source"]["critic"]
    tokenizer = load_tokenizer(source / "tokenizer")
    batch = document_batch([tokenizer(a + b)["input_ids"] for a, b in TEXTS], tokenizer.pad_token_id)
    with torch.no_grad():
        values = forward_documents(load_model(tmp_path / "out").chunks[0], batch, token_values=True)
        attributes = forward_documents(load_model(source).chunks[0], batch, token_values=True)
    assert values.shape[-1] == 1
    torch.testing.assert_close(values[..., 0], attributes @ torch.tensor(WEIGHTS), rtol=0, atol=1e-6)


def test_a_policy_imports_with_its_logits_bit_for_bit(sources, tmp_path):
    # divisible_by 8: NeMo's 328 rows get zero rows up to our 384
    nemo = write_nemo(sources["policy"], tmp_path / "sft.nemo", divisible_by=8)
    _import(nemo, tmp_path / "out", sources["policy"], kind="policy")
    imported, source = load_policy(tmp_path / "out"), load_policy(sources["policy"])
    vocab = len(imported.tokenizer)
    batch = document_batch([imported.tokenizer(a + b)["input_ids"] for a, b in TEXTS], 0)
    with torch.no_grad():
        ours, theirs = (forward_logits(p.chunks[0], batch)[..., :vocab] for p in (imported, source))
    assert torch.equal(ours, theirs)
    entry = model_entry(tmp_path / "out", read_metadata(tmp_path / "out"))
    whole = megatron_io.load(tmp_path / "out", entry.config, entry.padded_vocab_size, torch.float32, entry.prefix,
                             POLICY)
    for name in (megatron_io.EMBEDDING, "output_layer.weight"):
        assert whole[name].shape[0] == 384 and not whole[name][vocab:].any(), name  # padding rows are zeros


def test_bf16_weights_import_in_their_dtype_or_as_asked(sources, tmp_path):
    nemo = write_nemo(sources["reward"], tmp_path / "rm.nemo", precision="bf16")
    expected = whole_tensors(sources["reward"])
    for dtype, name in ((None, "bfloat16"), ("fp32", "float32")):
        out = tmp_path / f"out-{name}"
        _import(nemo, out, sources["reward"], dtype=dtype)
        entry = model_entry(out, read_metadata(out))
        assert entry.dtype == name
        whole = megatron_io.load(out, entry.config, entry.padded_vocab_size, getattr(torch, name), entry.prefix)
        for key, value in whole.items():
            if key.startswith("reward_head."):  # fp32 in NeMo-Aligner's file (force_head_dtype) and here
                want = expected.get(key, torch.zeros_like(value))  # the source has no bias: NeMo's is zero
                assert value.dtype == torch.float32 and torch.equal(value, want), key
            elif key != megatron_io.EMBEDDING:
                assert torch.equal(value.float(), expected[key].bfloat16().float()), key


def test_an_imported_reward_model_exports_to_hugging_face(sources, tmp_path):
    nemo = write_nemo(sources["reward"], tmp_path / "rm.nemo")
    _import(nemo, tmp_path / "out", sources["reward"])
    folder = export_hf(tmp_path / "out", tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    scorer = _scorer(tmp_path / "out")
    for one, ours in zip(scorer.encoder.texts(TEXTS), scorer.score([t.ids for t in scorer.encoder.texts(TEXTS)])):
        with torch.no_grad():
            theirs = hf(torch.tensor([one.ids])).logits[0]
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


REFUSALS = {
    "zarr": ("sharded_backend='zarr'", lambda folder: _edit_json(folder / "model_weights" / "metadata.json",
                                                                  sharded_backend="zarr")),
    "use_avg_pool": ("use_avg_pool=True", lambda folder: _edit_config(folder, use_avg_pool=True)),
    "rotary_percentage": ("rotary_percentage=0.5", lambda folder: _edit_config(folder, rotary_percentage=0.5)),
    "unknown key": ("attention_sink_tokens: not keys this importer knows.*--ignore-key",
                    lambda folder: _edit_config(folder, attention_sink_tokens=4)),
    "layers": ("linear_qkv.layer_norm_weight of shape \\[2, 64\\], but .* has \\[3, 64\\]",
               lambda folder: _edit_config(folder, num_layers=3)),
    "legacy": ("legacy NeMo-1 checkpoint.*convert_gpt_nemo_to_mcore.py", lambda folder: _legacy(folder)),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_cannot_be_reproduced_is_refused_by_name(sources, tmp_path, case):
    message, edit = REFUSALS[case]
    folder = write_nemo(sources["reward"], tmp_path / "rm", form="folder")
    edit(folder)
    with pytest.raises(CheckpointError, match=message):
        _import(folder, tmp_path / "out", sources["reward"])
    assert not (tmp_path / "out").exists()


def test_an_sft_model_is_not_a_reward_model(sources, tmp_path):
    folder = write_nemo(sources["policy"], tmp_path / "sft", form="folder")
    with pytest.raises(CheckpointError, match=r"missing \['model.rm_head.bias', 'model.rm_head.weight'\].*"
                                              "--model-kind policy"):
        _import(folder, tmp_path / "out", sources["policy"])


def test_an_unknown_key_named_by_the_user_and_a_hub_tokenizer(sources, tmp_path):
    folder = write_nemo(sources["reward"], tmp_path / "rm", form="folder")
    _edit_config(folder, attention_sink_tokens=4)
    with pytest.raises(CheckpointError, match="tokenizer.type='example-org/tiny-llama-tokenizer'.*--tokenizer"):
        import_nemo(folder, tmp_path / "out", ignored_keys=("attention_sink_tokens",))
    _import(folder, tmp_path / "out", sources["reward"], ignored_keys=("attention_sink_tokens",))
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))


def test_a_tokenizer_folder_the_file_carries_is_carried_over(sources, tmp_path):
    name = "9f1c2e_tokenizer"
    nemo = write_nemo(sources["reward"], tmp_path / "rm.nemo", form="tar.gz", artefacts={
        name: sources["reward"] / "tokenizer"}, tokenizer={"library": "huggingface", "type": f"nemo:{name}"})
    import_nemo(nemo, tmp_path / "out")
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))


def test_the_imported_tokenizer_adds_no_bos_as_nemo_tokenizes(sources, tmp_path):
    # A tokenizer folder whose encoding starts every text with a BOS (here id 2), as Llama's does.
    tokenizer = load_tokenizer(sources["reward"] / "tokenizer")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<unk> $A", pair="<unk> $A $B:1",
                                                                    special_tokens=[("<unk>", 2)])
    save_tokenizer(tokenizer, tmp_path / "bos")
    assert load_tokenizer(tmp_path / "bos")("reward")["input_ids"][0] == 2
    nemo = write_nemo(sources["reward"], tmp_path / "rm.nemo")
    import_nemo(nemo, tmp_path / "out", tokenizer_dir=tmp_path / "bos")
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))


def test_the_tool_converts_without_nemo(sources, tmp_path):
    nemo = write_nemo(sources["reward"], tmp_path / "rm.nemo", form="tar.gz")
    blocker = tmp_path / "blocked" / "nemo"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the importer must not import nemo')\n")
    result = run_command([PYTHON, "tools/convert_nemo_to_megatron.py", "--nemo", str(nemo), "--out-dir",
                          str(tmp_path / "out"), "--tokenizer", str(sources["reward"] / "tokenizer")],
                         env={"PYTHONPATH": f"{tmp_path / 'blocked'}:{REPO}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {tmp_path / 'out'}" in result.stdout
    assert torch.equal(_rewards(tmp_path / "out"), _rewards(sources["reward"]))
    refused = run_command([PYTHON, "tools/convert_nemo_to_megatron.py", "--nemo", str(nemo), "--out-dir",
                           str(tmp_path / "again")])
    assert refused.returncode == 2 and "--tokenizer" in refused.stderr


# ---- helpers


def _edit_config(folder, **keys):
    path = folder / "model_config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **keys}, sort_keys=False))


def _edit_json(path, **keys):
    path.write_text(json.dumps({**json.loads(path.read_text()), **keys}))


def _legacy(folder):
    shutil.rmtree(folder / "model_weights")
    (folder / "mp_rank_00").mkdir()
    torch.save({"model.language_model.embedding.word_embeddings.weight": torch.zeros(2, 2)},
               folder / "mp_rank_00" / "model_weights.ckpt")


def _names(archive) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def _member(archive, name) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()
