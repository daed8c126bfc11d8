"""Converted checkpoints compute what `transformers` computes, at TP1, TP2, PP2 and TP2xPP2.

Every family is imported from a real `*ForSequenceClassification` folder (rewards
compared) and from a `*ForCausalLM` folder, as a reward model (the new head aside,
the last token's hidden state compared) and as a policy (logits over the real
vocabulary at every real token compared, loaded from the checkpoint and straight
from the folder), then run by one 4-rank torchrun job over all layouts. The
policies cover tied embeddings (llama, and a tied qwen2) and a separate `lm_head`
(mistral, qwen2). Token classifiers (llama with 3 classes, qwen2 with 2) are imported as
token-head reward models: class logits and the positive class's probability at every real
token compared, from the checkpoint and straight from the folder. Batches are right- and
left-padded, with rows of different lengths.

Folders are saved by transformers 5, which spells RoPE as one `rope_parameters` entry; copies of
some (llama's with llama3 scaling, qwen2's with theta 1e6) spell it the transformers 4.x way
(`rope_theta`, `rope_scaling`), and convert to the same model as transformers reads from them.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from megatron_rm.convert import import_hf
from megatron_rm.core.checkpoint_files import model_entry, read_metadata
from megatron_rm.objectives.step_rewards import positive_probability
from tests.conftest import REPO, torchrun
from tests.convert.hf_models import FAMILIES, respell_as_4x, save_model, tokenizer

pytestmark = pytest.mark.slow  # real torchrun jobs

TOLERANCE = 1e-4  # relative, fp32
LAYOUTS = ("tp1_pp1", "tp2_pp1", "tp1_pp2", "tp2_pp2")
POLICIES = {"llama": {}, "mistral": {}, "qwen2": {}, "qwen2-tied": {"tie_word_embeddings": True}}
"""Causal LMs imported as policies: the family (the name's stem) and their config changes."""
TIED = {"llama", "qwen2-tied"}
TOKEN_HEADS = {"llama": 3, "qwen2": 2}
"""`*ForTokenClassification` folders imported as token-head reward models: family and classes."""
SPELLED_4X = ("llama-sequence_classification", "qwen2-sequence_classification", "llama-token", "llama-policy",
              "qwen2-policy")
"""Folders also converted from a copy whose config.json spells RoPE the transformers 4.x way."""
AUTO_CLASSES = {"sequence_classification": transformers.AutoModelForSequenceClassification,
                "token": transformers.AutoModelForTokenClassification, "policy": transformers.AutoModelForCausalLM}


def _batches(lengths=(23, 9, 17, 4, 30)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right- and left-padded batches of random tokens (never the pad id), each ending in EOS."""
    tok = tokenizer()
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(max(tok.all_special_ids) + 1, len(tok), (length,), generator=generator)
            for length in lengths]
    for tokens in rows:
        tokens[-1] = tok.eos_token_id
    width = max(lengths) + 2
    batches = []
    for side in ("right", "left"):
        ids = torch.full((len(lengths), width), tok.pad_token_id)
        mask = torch.zeros(len(lengths), width, dtype=torch.int64)
        for row, (tokens, length) in enumerate(zip(rows, lengths)):
            span = slice(0, length) if side == "right" else slice(width - length, width)
            ids[row, span], mask[row, span] = tokens, 1
        batches.append((ids, mask))
    return batches


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def _assert_matches(ours: list[torch.Tensor], references: list[torch.Tensor]) -> None:
    """Per batch: the same shape, and within TOLERANCE of the reference."""
    assert len(ours) == len(references)
    for mine, reference in zip(ours, references):
        assert mine.shape == reference.shape
        assert _relative_error(mine, reference) < TOLERANCE, (mine, reference)


@torch.no_grad()
def _hf_rewards(hf_model, batches) -> list[torch.Tensor]:
    return [hf_model(input_ids=ids, attention_mask=mask).logits for ids, mask in batches]


@torch.no_grad()
def _hf_logits(hf_model, batches) -> list[torch.Tensor]:
    """transformers' logits at each batch's real tokens, (tokens, vocab)."""
    return [hf_model(input_ids=ids, attention_mask=mask).logits[mask.bool()] for ids, mask in batches]


@pytest.fixture(scope="module")
def parity_root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert_parity")


@pytest.fixture(scope="module")
def scored(parity_root):
    """(HF references, {layout: worker results}) for every family and source kind."""
    root = parity_root
    batches = _batches()
    torch.save(batches, root / "batches.pt")
    checkpoints = root / "checkpoints"
    references = {}
    # A bf16 checkpoint loads into the fp32 training model: compare with transformers on
    # the same bf16-rounded weights in fp32.
    hf_model = save_model("qwen2", root / "hf" / "qwen2-bf16", dtype=torch.bfloat16, seed=99)
    import_hf(root / "hf" / "qwen2-bf16", checkpoints / "qwen2-bf16")
    references["qwen2-bf16"] = _hf_rewards(hf_model, batches)
    for family in FAMILIES:
        for kind in ("sequence_classification", "causal_lm"):
            name = f"{family}-{kind}"
            hf_model = save_model(family, root / "hf" / name, kind, seed=len(references))
            import_hf(root / "hf" / name, checkpoints / name)
            if kind == "sequence_classification":
                references[name] = _hf_rewards(hf_model, batches)
            else:
                last = [m.shape[1] - 1 - m.flip(1).argmax(1) for _, m in batches]
                with torch.no_grad():
                    references[name] = [hf_model.model(input_ids=i, attention_mask=m).last_hidden_state[
                        torch.arange(len(i)), end] for (i, m), end in zip(batches, last)]
    for name, changes in POLICIES.items():
        folder = root / "hf" / f"{name}-policy"
        hf_model = save_model(name.split("-")[0], folder, "causal_lm", seed=len(references), config=changes)
        import_hf(folder, checkpoints / f"{name}-policy", kind="policy")
        references[f"{name}-policy"] = _hf_logits(hf_model, batches)
    for family, classes in TOKEN_HEADS.items():
        folder = root / "hf" / f"{family}-token"
        hf_model = save_model(family, folder, "token_classification", num_labels=classes, seed=len(references))
        import_hf(folder, checkpoints / f"{family}-token")
        references[f"{family}-token"] = _hf_logits(hf_model, batches)
    for name in SPELLED_4X:
        folder = respell_as_4x(root / "hf" / name, root / "hf" / f"{name}-4x")
        import_hf(folder, checkpoints / f"{name}-4x", kind="policy" if name.endswith("policy") else "reward")
        # The reference is what transformers reads from the respelled folder itself.
        hf_model = AUTO_CLASSES[name.split("-")[1]].from_pretrained(folder, attn_implementation="eager").eval()
        read = _hf_rewards if name.endswith("sequence_classification") else _hf_logits
        references[f"{name}-4x"] = read(hf_model, batches)
    (root / "out").mkdir()
    torchrun(4, REPO / "tests" / "convert" / "parity_worker.py", "--checkpoints", str(checkpoints),
             "--batches", str(root / "batches.pt"), "--out", str(root / "out"))
    return references, {layout: torch.load(root / "out" / f"{layout}.pt") for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_rewards_match_transformers(scored, family, layout):
    references, results = scored
    name = f"{family}-sequence_classification"
    _assert_matches(results[layout][name]["rewards"], references[name])
    _assert_matches(results[layout][name]["rewards_from_hf"], references[name])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", SPELLED_4X)
def test_either_config_spelling_converts_to_what_transformers_reads(scored, name, layout):
    """The 4.x-spelled copy, from its checkpoint and straight from the folder, against transformers
    reading that copy; which is the model the transformers 5 folder holds."""
    references, results = scored
    ours = results[layout][f"{name}-4x"]
    classifier = name.endswith("sequence_classification")
    for found in ([ours["rewards"], ours["rewards_from_hf"]] if classifier else _at_real_tokens(ours)):
        _assert_matches(found, references[f"{name}-4x"])
    _assert_matches(references[f"{name}-4x"], references[name])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_hidden_states_match_transformers(scored, family, layout):
    references, results = scored
    name = f"{family}-causal_lm"
    _assert_matches(results[layout][name]["hidden"], references[name])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_checkpoint_loads_into_the_fp32_model(scored, layout):
    references, results = scored
    _assert_matches(results[layout]["qwen2-bf16"]["rewards"], references["qwen2-bf16"])


def test_left_and_right_padding_score_alike(scored):
    _, results = scored
    right, left = results["tp2_pp2"]["llama-sequence_classification"]["rewards"]
    assert _relative_error(left, right) < TOLERANCE


def _at_real_tokens(result: dict) -> list[list[torch.Tensor]]:
    """A per-token result's logits at each batch's real tokens, (tokens, ...): from the converted
    checkpoint and from the Hugging Face folder converted in memory."""
    batches = _batches()
    return [[logits[mask.bool()] for logits, (_, mask) in zip(result[source], batches)]
            for source in ("logits", "logits_from_hf")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", POLICIES)
def test_policy_logits_match_transformers(scored, name, layout):
    """From the converted checkpoint and from the Hugging Face folder, loaded by `load_policy`."""
    references, results = scored
    for ours in _at_real_tokens(results[layout][f"{name}-policy"]):
        _assert_matches(ours, references[f"{name}-policy"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", TOKEN_HEADS)
def test_token_logits_match_transformers(scored, family, layout):
    """`AutoModelForTokenClassification`'s logits at every real token, from the converted checkpoint and
    from the Hugging Face folder (`loading.find`), and the positive class's probability read from them."""
    references, results = scored
    reference = references[f"{family}-token"]
    for ours in _at_real_tokens(results[layout][f"{family}-token"]):
        assert ours[0].shape[-1] == TOKEN_HEADS[family]
        _assert_matches(ours, reference)
        _assert_matches([positive_probability(x) for x in ours], [positive_probability(x) for x in reference])


def test_policies_cover_tied_and_separate_output_layers(scored, parity_root):
    for name in POLICIES:
        folder = parity_root / "checkpoints" / f"{name}-policy"
        entry = model_entry(folder, read_metadata(folder))
        assert entry.kind == "policy" and entry.config.tie_word_embeddings == (name in TIED), name
