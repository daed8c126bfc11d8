"""The reward server in this process: real uvicorn on a loopback port, real HTTP clients, real
tiny models. Every endpoint gives the scorer's own reward for the same text (and transformers'
within 1e-4); concurrent clients each get their own rewards from merged forwards; a failing
forward is a 500 and a dead forward loop a 503, never a hang.

Two servers: `one` (one label, a chat template, no stored statistics, small limits) and
`two` (two labels with stored statistics, /get_reward normalised).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests
import torch
import uvicorn

from megatron_rm.errors import UsageError
from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from megatron_rm.server.app import Server, build_app, listen
from megatron_rm.server.serving_loop import Batcher, BatchLimits, Lead
from tests.convert.hf_models import save_model
from tests.data.tokenizer_variants import save_variant

MAX_LENGTH, MAX_ITEMS, MAX_BODY = 64, 8, 16384
STATS = {"mean": [0.25, -0.5], "std": [2.0, 0.5]}
LABELS = {"0": "rejected", "1": "chosen"}
"""`two`'s class names (config.json's id2label), which /classify answers with."""
PAIRS = [("What is 2+2?", " It is 4."), ("Name a colour.", " Blue, like the sky over the sea at noon."),
         ("Hi", " Hello there, how can I help you today with your question?")]
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


@contextmanager
def running(app, **config):
    """`app` served by uvicorn (more `config` for its Config) on a free loopback port in a thread;
    yields its base URL."""
    sock = listen("127.0.0.1", 0)
    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def one(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("server") / "one"
    reference = save_model("llama", folder, seed=5)
    save_variant(folder, chat=True)
    scorer = Scorer(load_model(folder), ScoreSettings(max_length=MAX_LENGTH))
    batcher = Batcher(Lead(scorer), BatchLimits(wait_s=0.05))
    app = build_app(scorer, batcher, name="rm-one", max_items=MAX_ITEMS, max_body_bytes=MAX_BODY)
    with running(app) as url:
        yield url, scorer, reference, batcher


@pytest.fixture(scope="module")
def two(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("server") / "two"
    save_model("llama", folder, num_labels=2, seed=6)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "reward_normalization": STATS,
                                                    "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}))
    scorer = Scorer(load_model(folder))
    with running(build_app(scorer, Batcher(Lead(scorer)), name="rm-two", normalize=True)) as url:
        yield url, scorer


def post(url: str, path: str, body) -> dict:
    response = requests.post(url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def score(scorer: Scorer, encoded) -> torch.Tensor:
    """What the server's forward computes for one request: its inputs, in order, as one batch."""
    return scorer.score([item.ids for item in encoded])


def test_every_endpoint_gives_the_scorers_reward(one):
    url, scorer, reference, _ = one
    encoded = scorer.encoder.texts(PAIRS)
    assert [item.ids for item in scorer.encoder.whole_texts([p + r for p, r in PAIRS])] == [e.ids for e in encoded]
    expected = score(scorer, encoded)[:, 0].tolist()
    with torch.no_grad():
        transformers = [reference(torch.tensor([item.ids])).logits.item() for item in encoded]
    torch.testing.assert_close(torch.tensor(expected), torch.tensor(transformers), rtol=0, atol=1e-4)

    native = post(url, "/score", {"items": [{"prompt": p, "response": r} for p, r in PAIRS]})
    assert native == {"rewards": expected, "rewards_normalized": None, "truncated": [False] * len(PAIRS)}
    openrlhf = post(url, "/get_reward", {"query": [p + r for p, r in PAIRS], "prompts": [p for p, _ in PAIRS],
                                         "labels": ["x"] * len(PAIRS)})
    assert openrlhf == {"rewards": expected, "scores": expected, "extra_logs": {}}
    classify = post(url, "/classify", {"model": "/where/verl/keeps/it", "input": [p + r for p, r in PAIRS],
                                       "use_activation": False})
    assert [item["probs"][-1] for item in classify["data"]] == expected
    assert classify["id"].startswith("classify-") and classify["object"] == "list" and classify["model"] == "rm-one"
    assert [(item["index"], item["label"], item["num_classes"]) for item in classify["data"]] == \
        [(index, "LABEL_0", 1) for index in range(len(PAIRS))]
    tokens = sum(len(item.ids) for item in encoded)
    assert classify["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                 "prompt_tokens_details": None}
    sigmoid = torch.tensor(expected).sigmoid().tolist()
    pooling = post(url, "/pooling", {"model": "m", "input": [p + r for p, r in PAIRS], "task": "classify"})
    assert pooling["id"].startswith("pool-") and [item["data"] for item in pooling["data"]] == [[s] for s in sigmoid]
    assert [item["object"] for item in pooling["data"]] == ["pooling"] * len(PAIRS)
    single = post(url, "/classify", {"model": "m", "input": PAIRS[1][0] + PAIRS[1][1], "use_activation": False})
    assert single["data"][-1]["probs"][-1] == score(scorer, encoded[1:2]).item()  # verl's read


def test_conversations_score_as_training_renders_them(one):
    url, scorer, reference, _ = one
    encoded = scorer.encoder.messages([tuple(CHAT)])
    expected = score(scorer, encoded).item()
    with torch.no_grad():
        assert abs(reference(torch.tensor([encoded[0].ids])).logits.item() - expected) < 1e-4
    assert post(url, "/score", {"items": [{"messages": CHAT}]})["rewards"] == [expected]
    assert post(url, "/score", {"items": [{"prompt": CHAT[:1], "response": CHAT[1:]}]})["rewards"] == [expected]
    assert post(url, "/classify", {"messages": CHAT, "use_activation": False})["data"][0]["probs"] == [expected]
    assert post(url, "/pooling", {"messages": CHAT, "use_activation": False})["data"][0]["data"] == [expected]
    parts = [{**message, "content": [{"type": "text", "text": message["content"]}]} for message in CHAT]
    assert post(url, "/classify", {"messages": parts, "use_activation": False})["data"][0]["probs"] == [expected]


def test_activation_and_its_legacy_aliases(one, two):
    url, scorer, _, _ = one
    text = PAIRS[0][0] + PAIRS[0][1]
    raw = score(scorer, scorer.encoder.whole_texts([text]))
    for flag in ("use_activation", "activation", "softmax"):
        assert post(url, "/classify", {"input": text, flag: False})["data"][0]["probs"] == raw[0].tolist()
        assert post(url, "/classify", {"input": text, flag: True})["data"][0]["probs"] == raw[0].sigmoid().tolist()
    assert post(url, "/classify", {"input": text})["data"][0]["probs"] == raw[0].sigmoid().tolist()
    url, scorer = two
    raw = score(scorer, scorer.encoder.whole_texts([text]))
    answer = post(url, "/classify", {"input": [text]})["data"][0]
    assert answer["probs"] == raw[0].softmax(-1).tolist() and answer["num_classes"] == 2
    assert answer["label"] == LABELS[str(int(raw[0].argmax()))]


def test_get_reward_keeps_order_and_normalises_the_first_label_when_asked(two):
    url, scorer = two
    queries = [p + r for p, r in PAIRS] + [PAIRS[0][0] + " 5", "One more, much longer query " * 3]
    rewards = score(scorer, scorer.encoder.whole_texts(queries))
    normalized = scorer.normalized(rewards)
    torch.testing.assert_close(normalized, (rewards - torch.tensor(STATS["mean"])) / torch.tensor(STATS["std"]))
    answer = post(url, "/get_reward", {"query": queries})
    assert answer["rewards"] == normalized[:, 0].tolist() == answer["scores"]
    native = post(url, "/score", {"items": [{"response": query} for query in queries]})
    assert native["rewards"] == rewards.tolist() and native["rewards_normalized"] == normalized.tolist()


def test_vllm_request_fields_empty_batches_and_head_health(one):
    """Fields vLLM defines that change nothing here are served (and an unknown one is refused in
    test_server_errors); an empty batch, as OpenRLHF's multi-server client sends, is an empty answer."""
    url, scorer, _, _ = one
    text = PAIRS[0][0] + PAIRS[0][1]
    plain = post(url, "/classify", {"input": [text]})["data"]
    metadata = {"model": "m", "user": "u-1", "request_id": "r-1", "priority": 3}
    assert post(url, "/classify", {"input": [text], **metadata})["data"] == plain
    pooling = post(url, "/pooling", {"input": [text], "task": None, "encoding_format": "float", **metadata})
    assert [item["data"] for item in pooling["data"]] == [item["probs"] for item in plain]
    assert post(url, "/get_reward", {"query": []}) == {"rewards": [], "scores": [], "extra_logs": {}}
    assert post(url, "/score", {"items": []}) == {"rewards": [], "rewards_normalized": None, "truncated": []}
    for path in ("/classify", "/pooling"):
        empty = post(url, path, {"input": []})
        assert empty["data"] == [] and empty["usage"]["prompt_tokens"] == 0
    head = requests.head(url + "/health", timeout=30)
    assert head.status_code == 200 and not head.content


def test_tokenizing_never_holds_other_clients_and_a_huge_text_is_refused_untokenized(one):
    """While the tokenizing thread is held, /health answers and a request waits for it; a text
    far past the limit is refused before it is tokenized."""
    _, scorer, _, _ = one
    app = build_app(scorer, Batcher(Lead(scorer)), name="rm-big", max_body_bytes=8 * 2**20)
    gate = threading.Event()
    text = PAIRS[0][0] + PAIRS[0][1]
    with running(app) as big, ThreadPoolExecutor(1) as client:
        app.state.tokenizing.pool.submit(gate.wait, 60)
        waiting = client.submit(post, big, "/classify", {"input": [text], "use_activation": False})
        assert requests.get(big + "/health", timeout=30).status_code == 200
        assert not waiting.done()  # held behind the tokenizing thread, not the event loop
        gate.set()
        expected = score(scorer, scorer.encoder.whole_texts([text]))[0].tolist()
        assert waiting.result(timeout=30)["data"][0]["probs"] == expected
        huge = requests.post(big + "/get_reward", json={"query": [text, "word " * 1_200_000]}, timeout=30)
        assert huge.status_code == 422, huge.text
        assert "query[1]: 6000000 characters cannot fit in 64 tokens" in huge.json()["error"]["message"]


def test_normalize_needs_stored_statistics(one):
    _, scorer, _, _ = one
    with pytest.raises(UsageError, match="stores no reward statistics"):
        build_app(scorer, Batcher(Lead(scorer)), name="rm", normalize=True)


def test_concurrent_clients_get_their_own_rewards_from_merged_forwards(one):
    url, scorer, _, batcher = one
    texts = [(f"Question {i}?", " answer" + " and more" * (i % 4) * (2 if i % 7 == 0 else 1)) for i in range(16)]
    alone = [score(scorer, scorer.encoder.texts([text])).item() for text in texts]
    before = requests.get(url + "/health", timeout=30).json()
    start = threading.Barrier(len(texts))

    def client(text):
        start.wait()
        return post(url, "/score", {"items": [{"prompt": text[0], "response": text[1]}]})["rewards"][0]

    with ThreadPoolExecutor(len(texts)) as pool:
        got = list(pool.map(client, texts))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(alone), rtol=1e-5, atol=1e-6)
    after = requests.get(url + "/health", timeout=30).json()
    assert after["status"] == "ok" and after["requests"] - before["requests"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts)  # the batcher merged requests
    assert after == {"status": "ok", **batcher.counts}


class Broken(Lead):
    """A forward that fails, and after it an idle tick that fails as a lost rank would make it.
    The tick fails only once a forward has: a slow start must not kill the loop before the
    first request reaches it."""

    failed = False

    def score(self, sequences):
        self.failed = True
        raise RuntimeError("the forward broke")

    def idle(self):
        if self.failed:
            raise RuntimeError("a rank is gone")


def test_a_failing_forward_is_a_500_and_a_dead_loop_a_503(one):
    scorer = one[1]
    with running(build_app(scorer, Batcher(Broken(scorer), idle_tick_s=0.2), name="broken")) as url:
        failed = requests.post(url + "/score", json={"items": [{"response": "r s"}]}, timeout=30)
        assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"]["message"]
        time.sleep(0.5)  # an idle tick fails: the loop stops
        assert requests.get(url + "/health", timeout=30).status_code == 503
        refused = requests.post(url + "/score", json={"items": [{"response": "r s"}]}, timeout=30)
        assert refused.status_code == 503 and "a rank is gone" in refused.json()["error"]["message"]
