"""One model gives one number, whoever reads it: our scorer against the stock transformers call.

Hugging Face reward models whose pad token is the EOS, a token of its own, or absent, scored as
whole texts (batches padded on the right and on the left), conversations through the chat template,
and token ids; straight from the folder and from the converted checkpoint (TP1 here, TP2 and PP2 in
test_reading_layouts.py). A reward model trained here is read at an EOS its exported tokenizer now
appends itself, so `tok(texts, padding=True)` reads where training read; a checkpoint saved before
the rule existed scores as it always did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from megatron_rm.cli import checkpoint_model
from megatron_rm.config import CheckpointConfig
from megatron_rm.convert import export_hf, import_hf
from megatron_rm.data import GroupEncoder, load_tokenizer
from megatron_rm.data.ending import Ending
from megatron_rm.data.records import Comparison
from megatron_rm.data.tokenize import reward_tokenizer
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.training.resume import start_source
from tests.conftest import REPO
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant

TOLERANCE = 1e-4  # relative, fp32
PADS = {"pad_is_eos": "</s>", "own_pad": "<pad>", "no_pad": None}
TEXTS = ["name a color: blue", "count to three: one two three four five six", "a fruit? lime",
         "say it twice: ok ok</s>"]  # the last one ends in the EOS token itself
CONVERSATIONS = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, friend"}],
                 [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]]
FORMAT_1 = REPO / "tests" / "fixtures" / "format1_checkpoint"


def save_reward_model(folder: Path, pad: str | None, kind: str = "sequence_classification") -> Path:
    """A tiny Llama `kind` folder whose tokenizer adds a BOS, has a ChatML template and `pad`;
    config.json's pad_token_id is the tokenizer's, as such models ship."""
    save_model("llama", folder, kind, seed=11)
    save_variant(folder, pad=pad, bos=True, chat=True)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = load_tokenizer(folder).pad_token_id
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def stock(folder: Path, texts: list[str], side: str, special_tokens: bool = True) -> torch.Tensor:
    """What a transformers user gets: `tok(texts, padding=True)` into `AutoModelForSequenceClassification`,
    `.logits[:, 0]` (one text at a time when the tokenizer has no pad token, as transformers requires)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.padding_side = side
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    groups = [texts] if tok.pad_token_id is not None else [[text] for text in texts]
    with torch.no_grad():
        return torch.cat([model.eval()(**tok(group, padding=len(group) > 1, return_tensors="pt",
                                             add_special_tokens=special_tokens)).logits[:, 0] for group in groups])


def rendered(folder: Path) -> list[str]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return [tok.apply_chat_template(conversation, tokenize=False) for conversation in CONVERSATIONS]


def ours(scorer: Scorer, encoded) -> torch.Tensor:
    assert all(one.ids is not None for one in encoded), [one.error for one in encoded]
    return scorer.score([one.ids for one in encoded])[:, 0]


def assert_same(mine: torch.Tensor, reference: torch.Tensor) -> None:
    assert ((mine - reference).abs().max() / reference.abs().max()).item() < TOLERANCE, (mine, reference)


@pytest.fixture(scope="module", params=list(PADS))
def hf_model(request, tmp_path_factory, single_rank):
    """(folder, scorers straight from the folder and from its converted checkpoint)."""
    root = tmp_path_factory.mktemp(request.param)
    folder = save_reward_model(root / "hf", PADS[request.param])
    import_hf(folder, root / "checkpoint")
    return folder, {"folder": Scorer(load_model(folder)), "checkpoint": Scorer(load_model(root / "checkpoint"))}


@pytest.mark.parametrize("side", ["right", "left"])
def test_texts_score_as_transformers_reads_them(hf_model, side):
    folder, scorers = hf_model
    want = stock(folder, TEXTS, side)
    for scorer in scorers.values():
        assert_same(ours(scorer, scorer.encoder.whole_texts(TEXTS)), want)
        assert_same(ours(scorer, scorer.encoder.texts([(text[:9], text[9:]) for text in TEXTS])), want)


def test_conversations_and_token_ids_score_as_transformers_reads_them(hf_model):
    folder, scorers = hf_model
    chat_want = stock(folder, rendered(folder), "right", special_tokens=False)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    for scorer in scorers.values():
        assert_same(ours(scorer, scorer.encoder.messages([tuple(c) for c in CONVERSATIONS])), chat_want)
        assert_same(ours(scorer, scorer.encoder.token_ids(tok(TEXTS)["input_ids"])), stock(folder, TEXTS, "right"))
        assert_same(ours(scorer, scorer.encoder.whole_texts(TEXTS, special_tokens=False)),
                    stock(folder, TEXTS, "right", special_tokens=False))


def test_a_hugging_face_model_gets_nothing_appended(hf_model):
    folder, scorers = hf_model
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    for scorer in scorers.values():
        ids = [one.ids for one in scorer.encoder.whole_texts(TEXTS)]
        expected = tok(TEXTS)["input_ids"]
        if tok.pad_token_id == tok.eos_token_id:  # transformers skips trailing pad tokens; so do we
            expected = [row[:-1] if row[-1] == tok.eos_token_id else row for row in expected]
        assert ids == expected


@pytest.fixture(scope="module")
def trained_here(tmp_path_factory, single_rank):
    """A reward model of ours (a causal LM's trunk with a new head, read at the EOS), its checkpoint and
    its export. The source tokenizer's pad is its EOS, so the export must give it one of its own."""
    root = tmp_path_factory.mktemp("ours")
    save_reward_model(root / "lm", "</s>", kind="causal_lm")
    import_hf(root / "lm", root / "checkpoint")
    export_hf(root / "checkpoint", root / "hf")
    return root, Scorer(load_model(root / "checkpoint"))


@pytest.mark.parametrize("side", ["right", "left"])
def test_our_exported_model_reads_at_the_eos_through_the_stock_call(trained_here, side):
    root, scorer = trained_here
    encoded = scorer.encoder.whole_texts(TEXTS)
    eos = scorer.model.tokenizer.eos_token_id
    assert all(one.ids[-1] == eos for one in encoded) and all(one.ids[-2] != eos for one in encoded[:3])
    assert encoded[3].ids[-2:] == [eos, eos]  # a text ending in the EOS token gets one more, as the tokenizer adds it
    assert_same(ours(scorer, encoded), stock(root / "hf", TEXTS, side))
    chats = scorer.encoder.messages([tuple(c) for c in CONVERSATIONS])
    assert all(one.ids[-1] == eos for one in chats)
    assert_same(ours(scorer, chats), stock(root / "hf", rendered(root / "hf"), side, special_tokens=False))
    exported = Scorer(load_model(root / "hf"))
    assert_same(ours(exported, exported.encoder.whole_texts(TEXTS)), ours(scorer, encoded))


def test_a_checkpoint_saved_before_the_rule_keeps_its_scores(tmp_path, single_rank):
    """The format-1 fixture's tokenizer appends nothing; its texts are still read at an appended EOS."""
    scorer = Scorer(load_model(FORMAT_1))
    old = load_tokenizer(FORMAT_1 / "tokenizer")
    assert old("a")["input_ids"][-1] != old.eos_token_id
    encoded = scorer.encoder.whole_texts(TEXTS[:3])
    assert [one.ids for one in encoded] == [ids + [old.eos_token_id] for ids in old(TEXTS[:3])["input_ids"]]
    export_hf(FORMAT_1, tmp_path / "hf")
    assert_same(ours(scorer, encoded), stock(tmp_path / "hf", TEXTS[:3], "left"))


def test_training_from_a_hugging_face_model_keeps_its_reading(hf_model, tmp_path):
    """A run started from the converted checkpoint takes its model, rule included (`cli.to_config`),
    and its data is encoded as the model reads: nothing appended, trailing pad tokens not read."""
    folder, scorers = hf_model
    checkpoint = Path(scorers["checkpoint"].model.name)
    model = checkpoint_model(start_source(CheckpointConfig(init=str(checkpoint)), tmp_path), False, [])
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert model.append_eos is False and model.pad_token_id == tok.pad_token_id
    encoder = GroupEncoder(reward_tokenizer(model), max_length=64, truncation="drop", ending=Ending.of(model))
    documents, reason = encoder.encode_comparison(Comparison("", (TEXTS[1], TEXTS[0]), source="test"))
    assert reason is None and documents == [one.ids for one in scorers["checkpoint"].encoder.whole_texts(TEXTS[1::-1])]
