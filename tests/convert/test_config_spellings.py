"""Both generations of `config.json` convert to the model transformers reads from them.

transformers 5 spells RoPE as one `rope_parameters` entry; 4.x wrote `rope_theta` and
`rope_scaling` at the top level; our exports write both. Every family's folder is read in
each spelling, and llama's (theta 500000, llama3 scaling: the spelling decides the model) is
run at TP1 against transformers reading each folder, from the folder and from its converted
checkpoint, as a reward model, a token classifier and a causal LM. The 4-rank layouts are
in test_parity.py; bad and ambiguous settings in test_bad_input.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from megatron_rm.config import ParallelConfig, RopeScalingConfig
from megatron_rm.convert import export_hf, import_hf
from megatron_rm.convert.hf_config import model_config
from megatron_rm.convert.hf_to_megatron import open_hf
from megatron_rm.data import Batch
from tests.convert.hf_models import FAMILIES, respell_as_4x, save_model
from tests.convert.parity_worker import folder_rewards, policy_logits, token_logits

KINDS = {"sequence_classification": ("reward", transformers.AutoModelForSequenceClassification),
         "token_classification": ("reward", transformers.AutoModelForTokenClassification),
         "causal_lm": ("policy", transformers.AutoModelForCausalLM)}
"""Each kind of folder: what it converts to, and the transformers class that reads it."""
ROPE = {"llama": (500000.0, RopeScalingConfig("llama3", 8.0, 1.0, 4.0, 64)), "mistral": (1e6, None),
        "qwen2": (1e6, None)}
"""What tests/convert/hf_models.py configures, as our config must read it."""


def _spellings(family: str, kind: str, root) -> dict:
    """The same weights as transformers 5 saved them and respelled the 4.x way: {spelling: folder}."""
    save_model(family, root / "5", kind, num_labels=3 if kind == "token_classification" else 1)
    return {"5": root / "5", "4.x": respell_as_4x(root / "5", root / "4.x")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_both_spellings_read_as_the_same_model(family, kind, tmp_path):
    folders = _spellings(family, kind, tmp_path)
    spelled = {json.dumps(sorted(json.loads((f / "config.json").read_text()))) for f in folders.values()}
    assert len(spelled) == 2  # the files differ ...
    models = {name: open_hf(folder, kind=KINDS[kind][0]).model for name, folder in folders.items()}
    assert models["5"] == models["4.x"]  # ... the model does not
    assert (models["5"].rotary_base, models["5"].rope_scaling) == ROPE[family]


def _batch() -> Batch:
    """Two right-padded rows of random tokens ending in EOS (id 1), real tokens only > 2."""
    ids = torch.randint(3, 280, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[0, 25], ids[1, 39] = 1, 1
    ids[0, 26:], mask[0, 26:] = 0, 0
    return Batch(ids, mask, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0))


@torch.no_grad()
def _transformers(folder, kind: str, batch: Batch) -> torch.Tensor:
    model = KINDS[kind][1].from_pretrained(folder, attn_implementation="eager").eval()
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return output if kind == "sequence_classification" else output[batch.attention_mask.bool()]


def _ours(path, kind: str, batch: Batch, grid) -> torch.Tensor:
    if kind == "sequence_classification":
        return folder_rewards(path, ParallelConfig(), [batch], grid)[0]
    per_token = token_logits if kind == "token_classification" else policy_logits
    return per_token(path, ParallelConfig(), [batch], grid)[0][batch.attention_mask.bool()]


@pytest.mark.parametrize("kind", KINDS)
def test_llama3_scaling_in_either_spelling_matches_transformers(kind, single_rank, tmp_path):
    """From the folder (converted in memory) and from its converted checkpoint, at TP1."""
    batch = _batch()
    for spelling, folder in _spellings("llama", kind, tmp_path).items():
        reference = _transformers(folder, kind, batch)
        checkpoint = import_hf(folder, tmp_path / f"megatron-{spelling}", kind=KINDS[kind][0])
        for source in (folder, checkpoint):
            ours = _ours(source, kind, batch, single_rank)
            error = ((ours - reference).abs().max() / reference.abs().max()).item()
            assert error < 1e-5, (spelling, source, error)


@pytest.mark.parametrize("kind", KINDS)
def test_an_export_spells_rope_for_both_generations(kind, single_rank, tmp_path):
    """`rope_parameters` for transformers 5, `rope_theta` and `rope_scaling` for 4.x, saying the same;
    transformers 5 and our importer read it back as the source model."""
    folders = _spellings("llama", kind, tmp_path)
    import_hf(folders["5"], tmp_path / "megatron", kind=KINDS[kind][0])
    exported = export_hf(tmp_path / "megatron", tmp_path / "back")
    config = json.loads((exported / "config.json").read_text())
    parameters = dict(config["rope_parameters"])
    assert parameters.pop("rope_theta") == config["rope_theta"] == 500000.0
    assert parameters == config["rope_scaling"] == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}
    assert open_hf(exported, kind=KINDS[kind][0]).model == open_hf(folders["5"], kind=KINDS[kind][0]).model
    batch = _batch()
    torch.testing.assert_close(_transformers(exported, kind, batch), _transformers(folders["5"], kind, batch),
                               rtol=1e-5, atol=1e-6)
    tokenizer = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class 4.x has too


@pytest.mark.parametrize("family", FAMILIES)
def test_every_field_the_importer_reads_is_transformers_5s(family, tmp_path):
    """Each architecture field set to a value no default has, in a config transformers 5 writes,
    comes out in our model config: no key the importer reads was renamed or moved."""
    values = dict(vocab_size=301, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=3, max_position_embeddings=777, rms_norm_eps=3e-5, initializer_range=0.03,
                  rope_theta=12345.0, head_dim=20)
    if family == "mistral":
        values["sliding_window"] = 99
    hf = transformers.AutoConfig.for_model(family, **values).to_dict()
    model = open_hf_config(hf, tmp_path / "config.json")
    assert (model.vocab_size, model.hidden_size, model.ffn_hidden_size, model.num_layers, model.num_attention_heads,
            model.num_query_groups, model.max_sequence_length, model.norm_epsilon, model.init_method_std,
            model.rotary_base, model.kv_channels) == tuple(values[k] for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "initializer_range", "rope_theta",
                "head_dim"))
    assert model.sliding_window == values.get("sliding_window")
    del hf["head_dim"]  # absent: hidden_size / heads, as transformers derives it
    hf.pop("sliding_window", None)  # absent: Mistral's 4096-token window, as transformers reads it
    absent = open_hf_config(hf, tmp_path / "config.json")
    assert (absent.kv_channels, absent.sliding_window) == (None, 4096 if family == "mistral" else None)


def open_hf_config(hf: dict, source):
    return model_config(hf, source, num_labels=1, head_bias=False, head_init_std=None)[1]
