"""The demo data set: reproducible, rule-consistent, unsolvable without the prompt, and fits the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from megatron_rm.data.tokenize import encode
from tests.examples.scripts import load_script, read_jsonl

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
DATA = DEMO / "data"
TOKENIZER = DEMO / "tokenizer"
MAX_LENGTH = 64  # conf/train_rm.yaml: data.max_length
L2 = 1e-3


def _load_script(name: str):
    return load_script(DEMO, name)


@pytest.fixture(scope="module")
def make_data():
    return _load_script("make_data")


@pytest.fixture(scope="module")
def train_rows():
    return read_jsonl(DATA / "train.jsonl")


@pytest.fixture(scope="module")
def eval_rows():
    return read_jsonl(DATA / "eval.jsonl")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


# --- 1. the shipped files are the generator's output -------------------------------------------

def test_shipped_files_match_generator_output(make_data, train_rows, eval_rows):
    train, held_out = make_data.generate(6000, 1000, seed=0)
    assert len(train_rows) == 6000 and len(eval_rows) == 1000
    assert train_rows == train
    assert eval_rows == held_out


# --- 2. the rule holds for every pair -----------------------------------------------------------

def test_chosen_lists_exactly_the_asked_count(make_data, train_rows, eval_rows):
    bad = [r for r in train_rows + eval_rows
           if make_data.listed_count(r["chosen"]) != make_data.asked_count(r["prompt"])]
    assert bad == []


def test_rejected_is_off_by_one_from_the_asked_count(make_data, train_rows, eval_rows):
    bad = [r for r in train_rows + eval_rows
           if abs(make_data.listed_count(r["rejected"]) - make_data.asked_count(r["prompt"])) != 1]
    assert bad == []


def test_chosen_differs_from_rejected(train_rows, eval_rows):
    assert all(r["chosen"] != r["rejected"] for r in train_rows + eval_rows)


def test_asked_counts_cover_one_to_eight(make_data, train_rows, eval_rows):
    for rows in (train_rows, eval_rows):
        assert {make_data.asked_count(r["prompt"]) for r in rows} == set(range(1, make_data.MAX_COUNT + 1))
    assert make_data.MAX_COUNT == 8


# --- 3. a response-only model cannot learn the rule; a prompt-aware feature can ----------------

def _bag_of_tokens(tokenizer, responses: list[str]) -> torch.Tensor:
    """Token-id count vectors of each response tokenized alone, as a (len(responses), vocab) matrix."""
    ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    lengths = torch.tensor([len(row) for row in ids])
    rows = torch.repeat_interleave(torch.arange(len(ids)), lengths)
    cols = torch.tensor([token for row in ids for token in row], dtype=torch.int64)
    counts = torch.zeros(len(ids), len(tokenizer), dtype=torch.float64)
    counts.index_put_((rows, cols), torch.ones(len(cols), dtype=torch.float64), accumulate=True)
    return counts


def _response_features(make_data, tokenizer, responses: list[str]) -> torch.Tensor:
    """Bag of response token ids plus a one-hot of the response's listed count (0..MAX_COUNT)."""
    listed = torch.tensor([make_data.listed_count(r) for r in responses])
    one_hot = F.one_hot(listed, make_data.MAX_COUNT + 1).to(torch.float64)
    return torch.cat([_bag_of_tokens(tokenizer, responses), one_hot], dim=1)


def _complies(make_data, rows: list[dict], side: str) -> torch.Tensor:
    """The prompt-aware feature [listed_count(response) == asked_count(prompt)] as a column."""
    return torch.tensor([[float(make_data.listed_count(r[side]) == make_data.asked_count(r["prompt"]))]
                         for r in rows], dtype=torch.float64)


def _pair_differences(make_data, tokenizer, rows: list[dict], prompt_aware: bool) -> torch.Tensor:
    """f(chosen) - f(rejected) per pair."""
    chosen = _response_features(make_data, tokenizer, [r["chosen"] for r in rows])
    rejected = _response_features(make_data, tokenizer, [r["rejected"] for r in rows])
    if prompt_aware:
        chosen = torch.cat([chosen, _complies(make_data, rows, "chosen")], dim=1)
        rejected = torch.cat([rejected, _complies(make_data, rows, "rejected")], dim=1)
    return chosen - rejected


def _fit_bradley_terry(diffs: torch.Tensor) -> torch.Tensor:
    """Linear reward weights minimising mean(-logsigmoid(w . diff)) + L2 |w|^2, full-batch LBFGS."""
    w = torch.zeros(diffs.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -F.logsigmoid(diffs @ w).mean() + L2 * w.dot(w)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def _accuracy(w: torch.Tensor, diffs: torch.Tensor) -> float:
    """Share of pairs where chosen scores strictly higher (a tie counts as wrong)."""
    return ((diffs @ w) > 0).double().mean().item()


@pytest.fixture(scope="module")
def held_out_accuracy(make_data, tokenizer, train_rows, eval_rows):
    """Held-out accuracy of the linear Bradley-Terry baseline, response-only and prompt-aware."""
    result = {}
    for name, prompt_aware in (("response_only", False), ("prompt_aware", True)):
        w = _fit_bradley_terry(_pair_differences(make_data, tokenizer, train_rows, prompt_aware))
        result[name] = _accuracy(w, _pair_differences(make_data, tokenizer, eval_rows, prompt_aware))
    print(f"held-out accuracy: {result}")
    return result


def test_response_only_baseline_stays_below_sixty_percent(held_out_accuracy):
    assert held_out_accuracy["response_only"] < 0.60, held_out_accuracy


def test_same_baseline_learns_the_rule_with_a_prompt_aware_feature(held_out_accuracy):
    assert held_out_accuracy["prompt_aware"] > 0.99, held_out_accuracy


# --- 4. the tokenizer -----------------------------------------------------------------------------

def test_tokenizer_is_fast_with_distinct_pad_eos_and_unk(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        assert token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_digits_one_to_eight_are_single_tokens(tokenizer):
    for digit in range(1, 9):
        ids = tokenizer(str(digit), add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (digit, ids)


def test_every_encoded_pair_fits_max_length(tokenizer, train_rows, eval_rows):
    longest = max(len(encode(tokenizer, r["prompt"], r[side]).ids)
                  for r in train_rows + eval_rows for side in ("chosen", "rejected"))
    assert longest <= MAX_LENGTH, longest


# --- 5. the tokenizer is reproducible -------------------------------------------------------------

def test_rebuilt_tokenizer_has_the_shipped_vocabulary(tokenizer, tmp_path):
    train_tokenizer = _load_script("train_tokenizer")
    train_tokenizer.build(DATA, 384).save_pretrained(str(tmp_path))
    rebuilt = AutoTokenizer.from_pretrained(str(tmp_path))
    assert rebuilt.get_vocab() == tokenizer.get_vocab()
