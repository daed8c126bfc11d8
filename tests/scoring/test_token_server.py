"""The reward server with a token-head model (a 3-class process reward model): real uvicorn on a
loopback port, real HTTP clients. vLLM's token_classify answers every token's class
probabilities; /classify, /pooling (classify) and /get_reward answer the aggregated reward;
/score answers step scores, natively and in vLLM's score shape; all equal the model run on one
document alone. Requests a token model cannot answer are refused naming the field."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from megatron_rm.data.step_tokens import locate_steps
from megatron_rm.data.steps import LabelledSteps
from megatron_rm.data.tokenize import encode
from megatron_rm.errors import UsageError
from megatron_rm.loading.reward import load_model
from megatron_rm.objectives.step_rewards import positive_probability
from megatron_rm.scoring.scorer import Scorer, ScoreSettings
from megatron_rm.scoring.token.scores import Located
from megatron_rm.scoring.verl import VerlRewardModel
from megatron_rm.server.app import build_app
from megatron_rm.server.serving_loop import Batcher, BatchLimits, Lead
from tests.scoring.test_server import running
from tests.scoring.token_models import alone, reference, save_token_model

MAX_LENGTH, MAX_ITEMS = 96, 6
TEXTS = ["What is 2+3? It is 5.", "Name a colour. Blue, like the sky over the sea at noon."]
CHAT = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "It is 5."}]
STEPS = [["2+3 means adding 3 to 2.", "That gives 5."], ["It is 6."], ["Add them.", "Get 5.", "Done."]]


@pytest.fixture(scope="module")
def served(tmp_path_factory, single_rank):
    folder = tmp_path_factory.mktemp("token_server") / "prm"
    save_token_model(folder, num_labels=3, seed=13)
    scorer = Scorer(load_model(folder), ScoreSettings(max_length=MAX_LENGTH))
    app = build_app(scorer, Batcher(Lead(scorer), BatchLimits(wait_s=0.05)), name="prm", max_items=MAX_ITEMS)
    with running(app) as url:
        yield url, scorer


def post(url: str, path: str, body) -> dict:
    response = requests.post(url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def close(got, want, atol: float = 1e-5) -> None:
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64),
                               rtol=0, atol=atol)


def whole_text_ids(scorer: Scorer, text: str) -> list[int]:
    return scorer.encoder.whole_texts([text])[0].ids


def steps_of(scorer: Scorer, prompt: str, steps: list[str]) -> Located:
    found = locate_steps(scorer.model.tokenizer, LabelledSteps(prompt, tuple(steps), None, "\n", "", ("s",) * 3),
                         scorer.encoder.ending)
    return Located(found.encoded.ids, found.label_positions, False)


def test_token_classify_gives_every_tokens_class_probabilities(served):
    url, scorer = served
    logits = [alone(scorer, whole_text_ids(scorer, text)) for text in TEXTS]
    answer = post(url, "/pooling", {"model": "m", "input": TEXTS, "task": "token_classify"})
    assert answer["id"].startswith("pool-") and answer["model"] == "prm"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    for item, one in zip(answer["data"], logits):
        assert item["object"] == "pooling" and len(item["data"]) == len(one) and len(item["data"][0]) == 3
        close(item["data"], one.softmax(-1))
    assert answer["usage"]["prompt_tokens"] == sum(len(one) for one in logits)
    raw = post(url, "/pooling", {"input": TEXTS[0], "task": "token_classify", "use_activation": False})
    close(raw["data"][0]["data"], logits[0])
    chat = post(url, "/pooling", {"messages": CHAT, "task": "token_classify"})["data"][0]["data"]
    close(chat, alone(scorer, scorer.encoder.messages([tuple(CHAT)])[0].ids).softmax(-1))


def test_sequence_level_answers_aggregate_the_responses_tokens(served):
    url, scorer = served
    # Whole strings: every token (and the EOS) counts; the mean is the default for an outcome.
    want = [float(positive_probability(alone(scorer, whole_text_ids(scorer, text))).mean()) for text in TEXTS]
    classify = post(url, "/classify", {"model": "m", "input": TEXTS, "use_activation": False})
    assert [item["num_classes"] for item in classify["data"]] == [2, 2] and classify["id"].startswith("classify-")
    close([item["probs"][-1] for item in classify["data"]], want)
    close([sum(item["probs"]) for item in classify["data"]], [1.0, 1.0])
    assert [item["label"] for item in classify["data"]] == [f"LABEL_{int(one > 0.5)}" for one in want]
    activated = post(url, "/classify", {"input": TEXTS})
    assert [item["probs"] for item in activated["data"]] == [item["probs"] for item in classify["data"]]
    pooled = post(url, "/pooling", {"input": TEXTS, "task": "classify"})
    close([item["data"] for item in pooled["data"]], [[1 - one, one] for one in want])
    rewards = post(url, "/get_reward", {"query": TEXTS, "prompts": ["x", "y"]})
    close(rewards["rewards"], want)
    assert rewards["scores"] == rewards["rewards"]
    assert post(url, "/get_reward", {"query": []}) == {"rewards": [], "scores": [], "extra_logs": {}}
    assert post(url, "/classify", {"input": []})["data"] == []
    # A conversation: its final message's tokens (and the EOS, where the model reads one) only.
    encoded = encode(scorer.model.tokenizer, tuple(CHAT[:1]), tuple(CHAT[1:]), scorer.encoder.ending)
    probabilities = positive_probability(alone(scorer, encoded.ids))
    assert 0 < encoded.prompt_tokens < len(encoded.ids) - 2
    chat = post(url, "/classify", {"messages": CHAT})["data"][0]["probs"][-1]
    close([chat], [float(probabilities[encoded.prompt_tokens:].mean())])
    assert abs(chat - float(probabilities.mean())) > 1e-4  # the prompt's tokens would change it


def test_score_answers_step_scores_natively_and_in_vllms_shape(served):
    url, scorer = served
    want = [reference(scorer, steps_of(scorer, "What is 2+3?", steps), "product") for steps in STEPS]
    native = post(url, "/score", {"items": [{"prompt": "What is 2+3?", "response": steps} for steps in STEPS]
                                  + [{"messages": CHAT}]})
    close(native["rewards"][:3], [reward for reward, _ in want])
    for got, (_, steps) in zip(native["step_rewards"], want):
        close(got, steps)
    assert native["step_rewards"][3] is None and native["truncated"] == [False] * 4
    assert native["rewards_normalized"] is None
    for queries in ("What is 2+3?", ["What is 2+3?"] * 3):
        answer = post(url, "/score", {"model": "m", "queries": queries, "documents": STEPS})
        assert answer["id"].startswith("score-") and answer["object"] == "list"
        assert [(item["index"], item["object"]) for item in answer["data"]] == [(i, "score") for i in range(3)]
        close([item["score"] for item in answer["data"]], [reward for reward, _ in want])
        for item, (_, steps) in zip(answer["data"], want):
            close(item["step_scores"], steps)
    outcome = post(url, "/score", {"queries": "What is 2+3?", "documents": [" It is 5."]})["data"][0]
    located = encode(scorer.model.tokenizer, "What is 2+3?", " It is 5.", scorer.encoder.ending)
    probabilities = positive_probability(alone(scorer, located.ids))[located.prompt_tokens:]
    assert outcome["step_scores"] is None
    close([outcome["score"]], [float(probabilities.mean())])


def test_concurrent_clients_get_their_own_step_scores(served):
    url, scorer = served
    prompts = [f"Question {index}?" for index in range(8)]
    bodies = [{"queries": prompt, "documents": [STEPS[index % 3]]} for index, prompt in enumerate(prompts)]
    want = [reference(scorer, steps_of(scorer, prompt, STEPS[index % 3]), "product")[0]
            for index, prompt in enumerate(prompts)]
    start = threading.Barrier(len(bodies))

    def client(body):
        start.wait()
        return post(url, "/score", body)["data"][0]["score"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        close(list(pool.map(client, bodies)), want)


CASES = [
    ("/pooling", {"input": "x y", "task": "embed"}, 400, "task", "task 'embed' is not served: a token-head"),
    ("/score", {}, 422, "items", "give 'items' (native) or 'documents'"),
    ("/score", {"items": [{"response": "a"}], "documents": ["b"]}, 422, "items", "exactly one of them"),
    ("/score", {"items": [{"response": "a"}], "queries": "q"}, 422, "queries", "goes with 'documents'"),
    ("/score", {"queries": ["a", "b"], "documents": ["x"]}, 422, "queries", "2 queries for 1 documents"),
    ("/score", {"queries": 3, "documents": ["x"]}, 422, "queries.str", "queries.str: Input should be a valid string"),
    ("/score", {"documents": [["a", "  "]]}, 422, "documents[0][1]", "documents[0][1]: empty step"),
    ("/score", {"documents": [[]]}, 422, "documents[0]", "documents[0]: expected a non-empty list"),
    ("/score", {"documents": ["a " * 200]}, 422, "documents[0]", "exceed the limit of 96"),
    ("/score", {"documents": ["a"] * (MAX_ITEMS + 1)}, 422, "documents", f"the server's limit of {MAX_ITEMS}"),
    ("/score", {"items": [{"prompt": "p", "response": ["a", 3]}]}, 422, "items[0].response[1]",
     "items[0].response[1]: expected a string (one step), got a number"),
    ("/score", {"items": [{"messages": CHAT, "prompt": "p"}]}, 422, "items[0].prompt", "not allowed with 'messages'"),
    ("/score", {"items": [{"prompt": 3, "response": ["a"]}]}, 422, "items[0].prompt",
     "items[0].prompt: expected a string or a list of messages"),
    ("/classify", {"input": ["a b", "  "]}, 422, "input[1]", "input[1]: empty response"),
    ("/get_reward", {"query": ["a " * 200]}, 422, "query[0]", "exceed the limit of 96"),
    ("/pooling", {"input": "x y", "task": "token_classify", "truncate_prompt_tokens": 4}, 422,
     "truncate_prompt_tokens", "not supported"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "fragment"), CASES, ids=[case[4][:40] for case in CASES])
def test_a_request_a_token_model_cannot_answer_is_refused_naming_the_field(served, path, body, status, param,
                                                                           fragment):
    url, _ = served
    response = requests.post(url + path, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param and fragment in error["message"], error
    assert len(post(url, "/score", {"documents": [["a"]]})["data"]) == 1  # still serving


def test_normalize_does_not_apply_to_a_token_head(served):
    _, scorer = served
    with pytest.raises(UsageError, match="whose rewards are probabilities"):
        build_app(scorer, Batcher(Lead(scorer)), name="prm", normalize=True)


def test_the_verl_adapter_refuses_a_token_head(served):
    _, scorer = served
    with pytest.raises(ValueError, match="token-head model"):
        VerlRewardModel(scorer)
