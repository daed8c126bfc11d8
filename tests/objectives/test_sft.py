"""The SFT objective through a real policy on one rank: the loss against a float64 reference of
masked next-token NLL from the model's own logits; prompt tokens, padding and packing change
nothing; config and data it refuses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_rm.config import LossConfig, ParallelConfig, RMConfig, SFTConfig
from megatron_rm.data import load_tokenizer
from megatron_rm.data.batching import collate
from megatron_rm.data.store import GroupStore, StoreWriter
from megatron_rm.errors import ConfigError, DataError
from megatron_rm.model import build_policy_model
from megatron_rm.objectives import build_objective
from megatron_rm.objectives.sft import next_token_targets
from megatron_rm.training.checks import validate
from tests.conftest import tiny_model_config
from tests.data.test_batching import make_store

# (document ids, prompt length): an ordinary example, an empty prompt, one whose only target is its
# EOS, and a long one.
EXAMPLES = [([5, 6, 7, 8, 9, 1], 3), ([40, 41, 42, 1], 0), ([30, 31, 32, 1], 3),
            ([50, 51, 52, 53, 54, 55, 56, 57, 58, 1], 2)]


def sft_store(folder, examples=EXAMPLES) -> GroupStore:
    writer = StoreWriter(folder, 300)
    for g, (ids, prompt) in enumerate(examples):
        writer.add([ids], None, None, prompt_key=g, prompt_lengths=[prompt])
    writer.finish({})
    return GroupStore(folder)


@pytest.fixture(scope="module")
def policy(single_rank):
    cfg = tiny_model_config()
    torch.manual_seed(0)
    model = build_policy_model(cfg, ParallelConfig(), len(load_tokenizer(cfg.tokenizer))).eval()
    return model


def sft(model):
    return build_objective(LossConfig(type="sft"), 1, vocab_size=model.vocab_size)


def reference_nll(logits: torch.Tensor, vocab_size: int, documents: list[tuple[list[int], int]],
                  where: list[tuple[int, int]]) -> float:
    """float64: -sum log softmax(real columns)[next token] over each document's response tokens
    (and its EOS), read at the document's (row, first column)."""
    total = 0.0
    log_probs = torch.log_softmax(logits[..., :vocab_size].double(), -1)
    for (ids, prompt), (row, start) in zip(documents, where):
        for t in range(max(prompt, 1), len(ids)):
            total -= float(log_probs[row, start + t - 1, ids[t]])
    return total


def test_the_loss_is_the_masked_next_token_nll_in_any_layout(policy, tmp_path):
    store = sft_store(tmp_path / "store")
    objective = sft(policy)
    expected_terms = sum(len(ids) - max(prompt, 1) for ids, prompt in EXAMPLES)
    results = {}
    for packed in (False, True):
        batch = collate(store, range(len(EXAMPLES)), 0, packed=packed, pad_to_multiple_of=8)
        with torch.no_grad():
            logits = objective.forward(policy, batch)
            loss_sum, terms, extra = objective(batch, logits)
        starts = [0] * len(EXAMPLES)
        if packed:
            starts = [sum(len(ids) for ids, _ in EXAMPLES[:i]) for i in range(len(EXAMPLES))]
        where = [(0 if packed else i, starts[i]) for i in range(len(EXAMPLES))]
        expected = reference_nll(logits, policy.vocab_size, EXAMPLES, where)
        assert int(terms) == expected_terms
        assert float(loss_sum) == pytest.approx(expected, rel=1e-6)
        summary = objective.summarize(extra["sums"])
        assert summary["target_tokens"] == expected_terms and summary["documents"] == len(EXAMPLES)
        assert summary["loss"] == pytest.approx(expected / expected_terms, rel=1e-6)
        assert summary["perplexity"] == pytest.approx(torch.tensor(expected / expected_terms).exp().item(), rel=1e-6)
        results[packed] = float(loss_sum)
    # Packing only moves documents: attention and the loss mask follow them.
    assert results[True] == pytest.approx(results[False], rel=1e-5)


def test_prompt_tokens_and_padding_are_never_targets(policy, tmp_path):
    """With the same logits, other ids at prompt positions (past each prompt's first token) and
    in the padding leave the loss and its gradient alone; the gradient reaches the logits only
    at the positions that predict a response token."""
    store = sft_store(tmp_path / "store")
    objective = sft(policy)
    batch = collate(store, range(len(EXAMPLES)), 0, packed=False, pad_to_multiple_of=8)
    with torch.no_grad():
        logits = objective.forward(policy, batch)
    changed_ids = batch.input_ids.clone()
    outside = ~batch.response_mask
    changed_ids[outside] = (changed_ids[outside] + 17) % policy.vocab_size
    changed = dataclasses.replace(batch, input_ids=changed_ids)
    grads = []
    for b in (batch, changed):
        leaf = logits.clone().requires_grad_(True)
        loss_sum, terms, _ = objective(b, leaf)
        loss_sum.backward()
        grads.append((float(loss_sum.detach()), leaf.grad))
    assert grads[0][0] == grads[1][0]
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)
    _, mask = next_token_targets(batch)
    touched = grads[0][1].abs().sum(-1) > 0
    assert torch.equal(touched, mask)
    # Row 0: prompt of 3, so position 2 (the prompt's last token) predicts the first response token,
    # position 4 predicts the EOS, and position 5 (the EOS) predicts nothing.
    assert mask[0].tolist()[:8] == [False, False, True, True, True, False, False, False]


def test_a_run_refuses_a_loss_of_the_other_model_kind():
    with pytest.raises(ConfigError, match=r"loss.type=bradley_terry trains a reward model \(tools/train_rm.py\); "
                                          "this run trains a policy model: loss.type must be one of sft"):
        validate(SFTConfig(loss=LossConfig(type="bradley_terry")), 1, cuda=False, te_available=False,
                 vocab_size=284, model_kind="policy")
    with pytest.raises(ConfigError, match=r"loss.type=sft trains a policy model \(tools/train_sft.py\)"):
        validate(RMConfig(loss=LossConfig(type="sft")), 1, cuda=False, te_available=False, vocab_size=284)
    validate(SFTConfig(), 1, cuda=False, te_available=False, vocab_size=284, model_kind="policy")
    assert SFTConfig().loss.type == "sft"


def test_sft_refuses_a_store_of_comparisons_or_without_prompt_lengths(tmp_path):
    objective = build_objective(LossConfig(type="sft"), 1, vocab_size=284)
    pairs = make_store(tmp_path / "pairs", [[[5, 6, 1], [5, 7, 1]]])
    with pytest.raises(DataError, match="loss.type=sft trains on one response per example.*: pairs.jsonl"):
        objective.check_data(pairs, "pairs.jsonl")
    old = sft_store(tmp_path / "old")
    (old.folder / "prompt_lengths.npy").unlink()
    with pytest.raises(DataError, match="records none"):
        objective.check_data(GroupStore(old.folder), "old")
    objective.check_data(sft_store(tmp_path / "new"), "new")
