"""verl's reward-model contract in process: batches laid out as verl lays them out (left-padded
prompt, right-padded response) get `rm_scores` at the last valid response token, equal to
scoring the same text directly and to `transformers` on the same Hugging Face folder.

verl itself cannot install beside our pins (see setup.py's "verl" extra), so the batches are
tensordict's real `TensorDict`, which is what a verl `DataProto` carries in `.batch`.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from transformers import AutoTokenizer

from megatron_rm.data import load_tokenizer
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from megatron_rm.scoring.verl import VerlRewardModel
from tests.conftest import DEMO
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant
from tests.scoring.verl_batches import verl_batch

PROMPT_WIDTH, RESPONSE_WIDTH = 32, 16  # verl_batch's defaults

@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    """A tiny Llama reward model whose tokenizer has a ChatML template, and its reference."""
    folder = tmp_path_factory.mktemp("verl") / "rm"
    reference = save_model("llama", folder, seed=5)
    save_variant(folder, chat=True)
    return Scorer(load_model(folder)), reference, load_tokenizer(folder)


@pytest.fixture(scope="module")
def policy_tokenizer():
    """Another tokenizer: the demo vocabulary with its own EOS, which the reward model lacks."""
    tokenizer = AutoTokenizer.from_pretrained(str(DEMO / "tokenizer"))
    tokenizer.add_special_tokens({"eos_token": "<|eot|>"})
    return tokenizer


def rm_scores(out, batch_size: int) -> torch.Tensor:
    assert isinstance(out, TensorDict) and list(out.batch_size) == [batch_size]  # verl is not installed
    scores = out["rm_scores"]
    assert scores.dtype == torch.float32 and scores.shape == (batch_size, RESPONSE_WIDTH)
    return scores


def read_rewards(scores: torch.Tensor, response_lengths: list[int]) -> torch.Tensor:
    """The reward of each row, after checking that every other slot is zero."""
    rows, where = torch.arange(len(scores)), torch.tensor(response_lengths) - 1
    rest = scores.clone()
    rest[rows, where] = 0
    assert not rest.any()
    return scores[rows, where]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_same_tokenizer_scores_the_rows_ids(setup):
    scorer, reference, tokenizer = setup
    eos = tokenizer.eos_token_id
    prompts = [encode(tokenizer, text) for text in ("give me a color", "name it", "a list of five fruits please")]
    responses = [encode(tokenizer, "blue") + [eos], encode(tokenizer, "one two three four"),
                 encode(tokenizer, "lime pear") + [eos]]
    batch = verl_batch(prompts, responses, tokenizer.pad_token_id)
    scores = rm_scores(VerlRewardModel(scorer).compute_reward(batch), 3)
    rewards = read_rewards(scores, [len(response) for response in responses])
    ids = [encoded.ids for encoded in scorer.encoder.token_ids([p + r for p, r in zip(prompts, responses)])]
    assert ids == [p + r for p, r in zip(prompts, responses)]  # scored as given
    torch.testing.assert_close(rewards, scorer.score(ids)[:, 0], rtol=0, atol=1e-6)
    with torch.no_grad():
        expected = torch.stack([reference(torch.tensor([row])).logits[0, 0] for row in ids])
    torch.testing.assert_close(rewards, expected, rtol=1e-4, atol=1e-4)
    assert len({round(value, 4) for value in rewards.tolist()}) == 3
    # A policy tokenizer equal to the reward model's (same fingerprint) takes the same path.
    same = VerlRewardModel(scorer, policy_tokenizer=load_tokenizer(tokenizer.name_or_path))
    assert same.policy_tokenizer is None
    torch.testing.assert_close(rm_scores(same.compute_reward(batch), 3), scores, rtol=0, atol=0)


def test_a_response_is_read_where_transformers_reads_its_ids(setup):
    """With or without its EOS, pad == EOS or not: the last token that is not the pad token."""
    scorer, reference, tokenizer = setup
    prompt, response = encode(tokenizer, "name a tool"), encode(tokenizer, "rake chisel")
    eos = tokenizer.eos_token_id
    for pad in (tokenizer.pad_token_id, eos):
        batch = verl_batch([prompt, prompt], [response + [eos], response], pad)
        plain = {key: batch[key] for key in batch.keys()}  # a plain mapping of tensors is accepted too
        rewards = read_rewards(rm_scores(VerlRewardModel(scorer).compute_reward(plain), 2),
                               [len(response) + 1, len(response)])
        with torch.no_grad():
            expected = torch.stack([reference(torch.tensor([prompt + response + [eos]])).logits[0, 0],
                                    reference(torch.tensor([prompt + response])).logits[0, 0]])
        torch.testing.assert_close(rewards, expected, rtol=1e-4, atol=1e-4)
        assert abs(rewards[0] - rewards[1]) > 1e-3


def test_other_policy_tokenizer_rescores_with_the_chat_template(setup, policy_tokenizer):
    scorer, _, _ = setup
    eot = policy_tokenizer.eos_token_id
    texts = ["red green", "one two three", "hello"]
    responses = [encode(policy_tokenizer, texts[0]) + [eot], encode(policy_tokenizer, texts[1]),
                 encode(policy_tokenizer, texts[2]) + [eot, eot]]
    messages = [[{"role": "user", "content": "give me two colors"}],
                [{"role": "system", "content": "count"}, {"role": "user", "content": "to three"}],
                [{"role": "user", "content": "say hello"}]]
    prompts = [encode(policy_tokenizer, " ".join(m["content"] for m in chat)) for chat in messages]
    raw_prompt = np.empty(3, dtype=object)  # as verl's collate stores message lists
    raw_prompt[:] = messages
    data = types.SimpleNamespace(batch=verl_batch(prompts, responses, policy_tokenizer.pad_token_id),
                                 non_tensor_batch={"raw_prompt": raw_prompt}, meta_info={})  # a DataProto's fields
    model = VerlRewardModel(scorer, policy_tokenizer=policy_tokenizer)
    rewards = read_rewards(rm_scores(model.compute_reward(data), 3), [len(response) for response in responses])

    def direct(suffix: str) -> torch.Tensor:
        decoded = [policy_tokenizer.decode(encode(policy_tokenizer, text)) + suffix for text in texts]
        pairs = [(tuple(chat), ({"role": "assistant", "content": text},)) for chat, text in zip(messages, decoded)]
        return scorer.score([encoded.ids for encoded in scorer.encoder.texts(pairs)])[:, 0]

    torch.testing.assert_close(rewards, direct(""), rtol=0, atol=1e-6)
    assert not torch.allclose(rewards, direct(policy_tokenizer.eos_token), atol=1e-4)  # the EOS text was stripped


def test_without_raw_prompts_the_decoded_texts_are_scored_as_a_plain_row(setup, policy_tokenizer):
    scorer, _, _ = setup
    prompt = encode(policy_tokenizer, "give me a color")
    response = encode(policy_tokenizer, "blue")
    batch = verl_batch([prompt], [response + [policy_tokenizer.eos_token_id]], policy_tokenizer.pad_token_id)
    out = VerlRewardModel(scorer, policy_tokenizer=policy_tokenizer).compute_reward(batch)
    reward = read_rewards(rm_scores(out, 1), [len(response) + 1])
    pair = (policy_tokenizer.decode(prompt), policy_tokenizer.decode(response))
    torch.testing.assert_close(reward, scorer.score([scorer.encoder.texts([pair])[0].ids])[:, 0], rtol=0, atol=1e-6)


def test_rows_that_cannot_be_scored_are_named(setup):
    scorer, _, tokenizer = setup
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt, response = encode(tokenizer, "name a tool"), encode(tokenizer, "rake") + [eos]
    long_prompt = encode(tokenizer, "a list of five fruits please and then five more fruits")
    batch = verl_batch([prompt, prompt, long_prompt, prompt, prompt], [response, [], response, [eos], response], pad)
    batch["attention_mask"][4, PROMPT_WIDTH] = 0  # a hole in the response's mask
    model = VerlRewardModel(Scorer(scorer.model, ScoreSettings(max_length=len(prompt) + len(response) + 2)))
    with pytest.raises(ValueError) as error:
        model.compute_reward(batch)
    message = str(error.value)
    assert "row 0" not in message
    assert "row 1: empty response" in message and "row 3: empty response" in message
    assert "row 2: " in message and "exceed the limit" in message
    assert "row 4: the response's attention mask is not right-padded" in message
    with pytest.raises(ValueError, match="label=1"):
        VerlRewardModel(scorer, label=1)
