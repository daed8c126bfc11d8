"""HF -> Megatron -> HF: every tensor comes back bit-identical, and transformers loads the result;
checkpoints saved as training saves them export and come back with the same weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from megatron_rm.convert import export_hf, import_hf
from megatron_rm.core.checkpoint_files import read_metadata
from megatron_rm.loading.models import find
from tests.convert.hf_models import FAMILIES, save_model

CLASSIFIERS = {"sequence": transformers.AutoModelForSequenceClassification,
               "token": transformers.AutoModelForTokenClassification}
"""The transformers class that loads a reward model of each head (`model.head`)."""


def _tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _load_classifier(folder, head: str = "sequence"):
    model, info = CLASSIFIERS[head].from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model


@pytest.mark.parametrize("head", CLASSIFIERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_round_trip_is_bit_identical(family, head, single_rank, tmp_path):
    """A *ForSequenceClassification (no score bias) or *ForTokenClassification (a score bias) folder."""
    num_labels = 3 if family == "llama" else 2
    save_model(family, tmp_path / "hf", f"{head}_classification", num_labels=num_labels)
    import_hf(tmp_path / "hf", tmp_path / "megatron")
    config = read_metadata(tmp_path / "megatron")["models"]["model"]["config"]
    expected = (head, num_labels, head == "token")
    assert (config["head"], config["num_labels"], config["head_bias"]) == expected
    found = find(tmp_path / "hf", "reward")  # converted in memory, as scoring loads a folder
    assert (found.config.head, found.config.num_labels, found.config.head_bias) == expected
    export_hf(tmp_path / "megatron", tmp_path / "back")
    source, back = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert source.keys() == back.keys()
    for name, tensor in source.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    model = _load_classifier(tmp_path / "back", head)
    assert type(model).__name__ == json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
    assert model.config.num_labels == num_labels and model.config.model_type == family
    assert model.config.pad_token_id == 0  # the demo tokenizer's <pad>, not EOS
    if head == "token":
        names = ["negative", "neutral", "positive"] if num_labels == 3 else ["negative", "positive"]
        assert model.config.id2label == dict(enumerate(names))
        assert model.config.label2id == {name: i for i, name in enumerate(names)}


def test_bf16_sharded_round_trip(single_rank, tmp_path):
    save_model("llama", tmp_path / "hf", dtype=torch.bfloat16, max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(tmp_path / "hf", tmp_path / "megatron")  # dtype follows the source: bf16
    assert read_metadata(tmp_path / "megatron")["models"]["model"]["dtype"] == "bfloat16"
    export_hf(tmp_path / "megatron", tmp_path / "back", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    source, back = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert source.keys() == back.keys() == index["weight_map"].keys()
    assert all(back[n].dtype == torch.bfloat16 and torch.equal(back[n], t) for n, t in source.items())
    _load_classifier(tmp_path / "back")


def test_causal_lm_gets_a_new_head_and_exports_as_a_classifier(single_rank, tmp_path):
    save_model("mistral", tmp_path / "hf", "causal_lm")
    import_hf(tmp_path / "hf", tmp_path / "megatron", num_labels=3, head_init_std=0.5, seed=7)
    metadata = read_metadata(tmp_path / "megatron")
    assert metadata["models"]["model"]["config"]["num_labels"] == 3 and metadata["source"]["head"] == "new"
    export_hf(tmp_path / "megatron", tmp_path / "back")
    source, back = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert set(back) == set(source) - {"lm_head.weight"} | {"score.weight"}
    assert all(torch.equal(back[n], source[n]) for n in back if n != "score.weight")
    expected = torch.empty(3, 64).normal_(0.0, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(back["score.weight"], expected)
    assert _load_classifier(tmp_path / "back").config.num_labels == 3


def _pad_is_eos(folder) -> None:
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["pad_token"] = settings["eos_token"]
    config.write_text(json.dumps(settings))
    (folder / "special_tokens_map.json").unlink(missing_ok=True)  # transformers 4.x wrote one


def test_our_reward_model_gets_a_pad_token_distinct_from_the_eos_it_reads_at(single_rank, tmp_path):
    """With pad == EOS transformers would read the reward one token before EOS."""
    save_model("qwen2", tmp_path / "hf", "causal_lm")
    _pad_is_eos(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "megatron")  # a new head: a reward model of ours, read at the EOS
    export_hf(tmp_path / "megatron", tmp_path / "back")
    model = _load_classifier(tmp_path / "back")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer.pad_token == "<|pad|>" and model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("a b")["input_ids"][-1] == tokenizer.eos_token_id  # the tokenizer appends it
    # The qwen2 test model's vocabulary has no spare row: the embedding grew by one.
    assert model.config.vocab_size == tokenizer.pad_token_id + 1
    assert torch.equal(_tensors(tmp_path / "back")["model.embed_tokens.weight"][:-1],
                       _tensors(tmp_path / "hf")["model.embed_tokens.weight"])


def test_a_hugging_face_reward_model_keeps_its_own_pad_and_tokenizer(single_rank, tmp_path):
    """Its reading (the last token that is not config.json's pad) is its own: nothing changes."""
    save_model("qwen2", tmp_path / "hf")
    _pad_is_eos(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "megatron")
    export_hf(tmp_path / "megatron", tmp_path / "back")
    before, after = (transformers.AutoTokenizer.from_pretrained(tmp_path / name) for name in ("hf", "back"))
    assert after.pad_token_id == after.eos_token_id == before.eos_token_id
    assert after("a b")["input_ids"] == before("a b")["input_ids"]
    pads = [_load_classifier(tmp_path / name).config.pad_token_id for name in ("hf", "back")]
    assert pads[0] == pads[1]  # config.json's, which transformers reads at


def test_reward_statistics_travel_with_the_model(single_rank, tmp_path):
    save_model("llama", tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["reward_normalization"] = {"mean": [0.25], "std": [1.5]}
    config_path.write_text(json.dumps(config))
    import_hf(tmp_path / "hf", tmp_path / "megatron")
    export_hf(tmp_path / "megatron", tmp_path / "back")
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["reward_normalization"] == {"mean": [0.25], "std": [1.5]}


def _reward_weights(folder, rows: int) -> dict[str, torch.Tensor]:
    """Every parameter of the reward model saved in `folder`, loaded as training loads it; the
    embedding cut to its first `rows`: its padding rows beyond the vocabulary are not exported
    (nor ever read)."""
    from megatron_rm.config import ParallelConfig
    from megatron_rm.core import checkpoint
    from megatron_rm.core.checkpoint_files import model_entry
    from megatron_rm.model import build_reward_model

    entry = model_entry(folder, read_metadata(folder))
    model = build_reward_model(entry.config, ParallelConfig(), entry.padded_vocab_size)
    checkpoint.load(folder, {"model": checkpoint.ModelState(model, entry.config, entry.padded_vocab_size)})
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights["embedding.word_embeddings.weight"] = weights["embedding.word_embeddings.weight"][:rows]
    return weights


def test_a_format_1_checkpoint_exports_and_comes_back_with_the_same_weights(single_rank, tmp_path):
    """A checkpoint of the previous format (one unnamed model) exports; importing the export
    gives a format-2 checkpoint whose weights equal the original's, bit for bit."""
    from tests.core.test_checkpoint import FORMAT_1

    export_hf(FORMAT_1, tmp_path / "hf")
    assert _load_classifier(tmp_path / "hf").config.num_labels == 1
    import_hf(tmp_path / "hf", tmp_path / "back")
    metadata = read_metadata(tmp_path / "back")
    assert metadata["models"]["model"]["prefix"] == "model."
    rows = metadata["models"]["model"]["config"]["vocab_size"]
    original, back = _reward_weights(FORMAT_1, rows), _reward_weights(tmp_path / "back", rows)
    assert original.keys() == back.keys()
    assert all(torch.equal(original[name], back[name]) for name in original)


@pytest.mark.parametrize("head_bias", [False, True])
def test_a_saved_token_head_exports_as_a_token_classifier_and_comes_back(head_bias, single_rank, tmp_path):
    """A token-head reward model saved by `checkpoint.save` (as training saves one) exports as a
    *ForTokenClassification whose logits at every real token are ours; imported again, every
    weight is the same, bit for bit. Without a bias of ours the export's score bias is zero (the
    class always has one), and the import keeps it."""
    import dataclasses

    from megatron_rm.config import ParallelConfig, padded_vocab_size
    from megatron_rm.core import checkpoint
    from megatron_rm.model import build_reward_model, inputs
    from tests.conftest import tiny_model_config

    cfg = dataclasses.replace(tiny_model_config(), head="token", num_labels=3, head_bias=head_bias)
    vocab = len(transformers.AutoTokenizer.from_pretrained(cfg.tokenizer))
    model = build_reward_model(cfg, ParallelConfig(), vocab).eval()
    if head_bias:  # drawn as zeros: make it count
        with torch.no_grad():
            model.reward_head.bias.normal_(generator=torch.Generator().manual_seed(0))
    state = checkpoint.ModelState(model, cfg, padded_vocab_size(vocab, cfg))
    saved = checkpoint.save(tmp_path / "run", 3, {"model": state})
    export_hf(tmp_path / "run", tmp_path / "hf")
    bias = model.reward_head.bias.detach() if head_bias else torch.zeros(3)
    assert torch.equal(_tensors(tmp_path / "hf")["score.bias"], bias)
    hf_model = _load_classifier(tmp_path / "hf", "token").eval()
    assert hf_model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    ids = torch.randint(4, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    with torch.no_grad():
        ours = model(ids, inputs.position_ids(mask), mask, token_values=True)
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], rtol=1e-4, atol=1e-5)

    import_hf(tmp_path / "hf", tmp_path / "back")
    config = read_metadata(tmp_path / "back")["models"]["model"]["config"]
    assert (config["head"], config["num_labels"], config["head_bias"]) == ("token", 3, True)
    original = _reward_weights(saved, vocab)
    back = _reward_weights(tmp_path / "back", vocab)
    assert back.pop("reward_head.bias").equal(original.pop("reward_head.bias", torch.zeros(3)))
    assert original.keys() == back.keys()
    assert all(torch.equal(original[name], back[name]) for name in original)


POLICIES = {"llama": {}, "mistral": {}, "qwen2": {}, "qwen2-tied": {"tie_word_embeddings": True}}
"""Causal LMs: llama's tiny config ties its embeddings; qwen2 comes both ways."""
CONFIG_FIELDS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                 "max_position_embeddings", "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling",
                 "sliding_window", "tie_word_embeddings", "eos_token_id", "pad_token_id")
"""Compared between the source's config.json and the export's. Special-token ids come from the
tokenizer on export; the tiny configs' `bos_token_id` is transformers' default, not the tokenizer's."""


def _load_causal_lm(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                                    attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model


@pytest.mark.parametrize("name", POLICIES)
def test_policy_round_trip_is_bit_identical(name, single_rank, tmp_path):
    source_model = save_model(name.split("-")[0], tmp_path / "hf", "causal_lm", config=POLICIES[name])
    import_hf(tmp_path / "hf", tmp_path / "megatron", kind="policy")
    entry = read_metadata(tmp_path / "megatron")["models"]["model"]
    tied = source_model.config.tie_word_embeddings
    assert entry["kind"] == "policy" and entry["config"]["tie_word_embeddings"] == tied
    export_hf(tmp_path / "megatron", tmp_path / "back")
    source, back = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert source.keys() == back.keys()
    assert ("lm_head.weight" in back) != tied
    for name_, tensor in source.items():
        assert back[name_].dtype == tensor.dtype and torch.equal(back[name_], tensor), name_
    # Megatron pads the vocabulary; the export holds exactly the real rows.
    vocab = source_model.config.vocab_size
    assert entry["padded_vocab_size"] > vocab
    assert all(back[n].shape[0] == vocab for n in ("model.embed_tokens.weight", "lm_head.weight") if n in back)
    saved, exported = (json.loads((tmp_path / folder / "config.json").read_text()) for folder in ("hf", "back"))
    fields = [field for field in CONFIG_FIELDS if saved.get(field) is not None]  # null: derived, e.g. head_dim
    assert {f: exported.get(f) for f in fields} == {f: saved[f] for f in fields}
    model = _load_causal_lm(tmp_path / "back")
    assert model.config.tie_word_embeddings == tied
    ids = torch.randint(4, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, source_model(ids).logits)


@pytest.mark.parametrize("tied", [False, True])
def test_a_saved_policy_exports_without_its_padding_rows(tied, single_rank, tmp_path):
    """A policy saved by `checkpoint.save` (as training saves one) exports as a causal LM whose
    logits are ours over the real vocabulary. Its padding rows are random here (as initialised),
    so a leak would show in the shapes and the logits."""
    import dataclasses

    from megatron_rm.config import ParallelConfig, padded_vocab_size
    from megatron_rm.core import checkpoint
    from megatron_rm.model import build_policy_model, inputs
    from tests.conftest import tiny_model_config

    cfg = dataclasses.replace(tiny_model_config(), tie_word_embeddings=tied)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer)
    vocab, padded = len(tokenizer), padded_vocab_size(len(tokenizer), cfg)
    model = build_policy_model(cfg, ParallelConfig(), vocab).eval()
    weights = model.embedding.word_embeddings.weight if tied else model.output_layer.weight
    assert padded > vocab and weights[vocab:].abs().sum() > 0
    saved = checkpoint.save(tmp_path / "run", 3, {"model": checkpoint.ModelState(model, cfg, padded, kind="policy")})
    assert read_metadata(saved)["models"]["model"]["kind"] == "policy"
    export_hf(tmp_path / "run", tmp_path / "hf")
    exported = _tensors(tmp_path / "hf")
    assert exported["model.embed_tokens.weight"].shape[0] == vocab
    assert ("lm_head.weight" in exported) == (not tied)
    if not tied:
        assert torch.equal(exported["lm_head.weight"], model.output_layer.weight[:vocab].detach())
    hf_model = _load_causal_lm(tmp_path / "hf").eval()
    assert hf_model.config.vocab_size == vocab and hf_model.config.tie_word_embeddings == tied
    ids = torch.randint(4, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(ids, inputs.position_ids(mask), mask)[..., :vocab]
        torch.testing.assert_close(hf_model(input_ids=ids, attention_mask=mask).logits, ours, rtol=1e-4, atol=1e-5)
