"""vLLM's reading on the wire: `/classify` and `/pooling` tokenize as vLLM does (its
`add_special_tokens`, `add_generation_prompt`, `chat_template_kwargs`) and answer transformers'
number for the same Hugging Face folder, here one whose pad token is its EOS."""

from __future__ import annotations

import pytest
import requests
import torch
import transformers

from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.server.app import build_app
from megatron_rm.server.serving_loop import Batcher, Lead
from tests.data.tokenizer_variants import CHATML
from tests.scoring.test_reading_rule import TEXTS, assert_same, save_reward_model, stock
from tests.scoring.test_server import running

# ChatML with an optional system line from a template variable, as templates read `enable_thinking`.
TEMPLATE = "{% if hint %}<|im_start|>system\n{{ hint }}<|im_end|>\n{% endif %}" + CHATML
CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4, of course"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, single_rank):
    folder = save_reward_model(tmp_path_factory.mktemp("server_reading") / "hf", "</s>")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    scorer = Scorer(load_model(folder))
    with running(build_app(scorer, Batcher(Lead(scorer)), name="rm")) as url:
        yield url, folder, tok


def pooled(url: str, body: dict) -> torch.Tensor:
    answer = requests.post(url + "/pooling", json={**body, "use_activation": False}, timeout=30)
    assert answer.status_code == 200, answer.text
    classify = requests.post(url + "/classify", json={**body, "use_activation": False}, timeout=30).json()
    values = [item["data"][0] for item in answer.json()["data"]]
    assert values == [item["probs"][0] for item in classify["data"]]
    return torch.tensor(values)


def test_texts_honour_add_special_tokens(served):
    url, folder, _ = served
    assert_same(pooled(url, {"input": TEXTS}), stock(folder, TEXTS, "left"))
    assert_same(pooled(url, {"input": TEXTS, "add_special_tokens": True}), stock(folder, TEXTS, "left"))
    without = pooled(url, {"input": TEXTS, "add_special_tokens": False})
    assert_same(without, stock(folder, TEXTS, "right", special_tokens=False))
    assert not torch.allclose(without, pooled(url, {"input": TEXTS}), atol=1e-4)  # the BOS mattered


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("hint", [None, "answer in words"])
def test_conversations_honour_the_template_options(served, generation_prompt, hint):
    url, folder, tok = served
    body = {"messages": CHAT, "add_generation_prompt": generation_prompt}
    if hint:
        body["chat_template_kwargs"] = {"hint": hint}
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation_prompt, hint=hint)
    assert_same(pooled(url, body), stock(folder, [text], "right", special_tokens=False))


@pytest.mark.parametrize("body,field", [
    ({"messages": CHAT, "add_special_tokens": True}, "add_special_tokens"),
    ({"messages": CHAT, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs.tokenize"),
    ({"input": "a text", "add_generation_prompt": True}, "add_generation_prompt"),
    ({"input": "a text", "chat_template_kwargs": {"hint": "x"}}, "chat_template_kwargs"),
    ({"input": "a text", "add_special_tokens": "yes"}, "add_special_tokens"),
])
def test_options_that_mean_nothing_are_refused_naming_them(served, body, field):
    url, folder, _ = served
    for path in ("/classify", "/pooling"):
        answer = requests.post(url + path, json=body, timeout=30)
        assert answer.status_code in (400, 422) and field in answer.text, answer.text
    assert_same(pooled(url, {"input": TEXTS}), stock(folder, TEXTS, "left"))  # still serving, same rewards
