"""Every refusal of the reward server: a 4xx with the one error body naming the field, after
which the server answers the next request as before (a bad request is refused on its own)."""

from __future__ import annotations

import socket

import pytest
import requests

from megatron_rm.server.app import build_app
from megatron_rm.server.serving_loop import Batcher, Lead
from tests.scoring.test_server import CHAT, MAX_BODY, MAX_ITEMS, one, running  # noqa: F401 (a fixture)

GOOD = {"items": [{"prompt": "What is 2+2?", "response": " 4"}]}
ITEM = {"prompt": "p", "response": "r"}
CASES = [
    ("/score", b"{bad", 400, "not valid JSON"),
    ("/score", [], 422, "body: Input should be a valid dictionary"),
    ("/score", {}, 422, "items: Field required"),
    ("/score", {"items": [ITEM], "stream": True}, 422, "stream: Extra inputs are not permitted"),
    ("/score", {"items": [{**ITEM, "score": 1}]}, 422, "items[0].score: Extra inputs are not permitted"),
    ("/score", {"items": [{"prompt": "p"}]}, 422, "items[0]: give 'response'"),
    ("/score", {"items": [{"messages": CHAT, "prompt": "p"}]}, 422, "items[0].prompt: not allowed"),
    ("/score", {"items": [ITEM, {"prompt": "p", "response": "  "}]}, 422, "items[1].response: empty response"),
    ("/score", {"items": [ITEM, {"prompt": "p", "response": 5}]}, 422, "items[1].response: expected a string"),
    ("/score", {"items": [{"prompt": 3, "response": "r"}]}, 422, "items[0].prompt: expected a string"),
    ("/score", {"items": [{"messages": "hi"}]}, 422, "items[0].messages: expected a list of messages"),
    ("/score", {"items": [{"messages": [CHAT[0], {"role": "bot", "content": "a"}]}]}, 422,
     "items[0].messages[1].role: unknown role 'bot'"),
    ("/score", {"items": [{"prompt": "p", "response": " long" * 100}]}, 422, "exceed the limit of 64"),
    ("/score", {"items": [ITEM] * (MAX_ITEMS + 1)}, 422, f"exceed the server's limit of {MAX_ITEMS}"),
    ("/get_reward", {"query": ["a b", 3]}, 422, "query[1]: Input should be a valid string"),
    ("/get_reward", {"query": ["a b", " "]}, 422, "query[1]: empty response"),
    ("/get_reward", {"query": ["a b"], "reward_key": "x"}, 422, "reward_key: Extra inputs"),
    ("/get_reward", {"query": ["q"] * (MAX_ITEMS + 1)}, 422, "query: 9 items exceed"),
    ("/classify", {"model": "m"}, 422, "give 'input'"),
    ("/classify", {"input": "x y", "messages": CHAT}, 422, "exactly one of them"),
    ("/classify", {"input": "x y", "truncate_prompt_tokens": 8}, 422, "truncate_prompt_tokens is not supported"),
    ("/classify", {"input": "x y", "use_activation": "no"}, 422, "use_activation: Input should be a valid boolean"),
    ("/classify", {"input": "x y", "use_activation": True, "activation": False}, 422, "disagree"),
    ("/classify", {"messages": [CHAT[0], {"role": "assistant"}]}, 422, "messages[1].content: expected a string"),
    ("/classify", {"messages": []}, 422, "messages: no messages"),
    ("/classify", {"messages": [CHAT[0]]}, 422, "messages[0].role: is 'user': the final message is the response"),
    ("/score", {"items": [{"messages": CHAT[:1]}]}, 422, "items[0].messages[0].role: is 'user'"),
    ("/pooling", {"input": "x y", "task": "embed"}, 400, "serves task 'classify' only"),
    ("/pooling", {"input": "x y", "encoding_format": "base64"}, 422, "encoding_format: Input should be 'float'"),
    ("/classify", {"input": "x y", "priority": "high"}, 422, "priority: Input should be a valid integer"),
    ("/classify", {"input": "x y", "dimensions": 4}, 422, "dimensions: Extra inputs are not permitted"),
    # JSON can spell a lone surrogate, which no tokenizer takes (verl retries a 500 for minutes).
    ("/get_reward", {"query": ["a b", "a \ud800 b"]}, 400, "query[1]: not valid Unicode: a lone surrogate"),
    ("/classify", {"input": "\udfff x"}, 400, "input: not valid Unicode"),
    ("/score", {"items": [{"messages": [{"role": "user", "content": "q \ud800"}, CHAT[1]]}]}, 400,
     "items[0].messages[0].content: not valid Unicode"),
    ("/pooling", {"input": "x y", "task": "token_classify"}, 400, "task 'token_classify' is not served"),
]


def refused(response: requests.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"].endswith("Error") and fragment in error["message"], error


def still_serving(url: str) -> None:
    response = requests.post(url + "/score", json=GOOD, timeout=30)
    assert response.status_code == 200 and len(response.json()["rewards"]) == 1


@pytest.mark.parametrize(("path", "body", "status", "fragment"), CASES, ids=[case[3][:40] for case in CASES])
def test_a_bad_request_is_refused_alone(one, path, body, status, fragment):  # noqa: F811
    url = one[0]
    if isinstance(body, bytes):
        response = requests.post(url + path, data=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        response = requests.post(url + path, json=body, timeout=30)
    refused(response, status, fragment)
    still_serving(url)


def test_bodies_over_the_limit_wrong_media_routes_and_methods(one):  # noqa: F811
    url = one[0]
    big = b'{"items": [{"response": "' + b"x" * MAX_BODY + b'"}]}'
    headers = {"content-type": "application/json"}
    refused(requests.post(url + "/score", data=big, headers=headers, timeout=30), 413, f"limit of {MAX_BODY} bytes")
    chunked = iter([big[:MAX_BODY // 2], big[MAX_BODY // 2:]])  # no Content-Length: counted as it arrives
    refused(requests.post(url + "/score", data=chunked, headers=headers, timeout=30), 413, "--max-body-bytes")
    refused(requests.post(url + "/score", data=b'{"items": []}', timeout=30), 415, "Content-Type: application/json")
    refused(requests.get(url + "/nowhere", timeout=30), 404, "Not Found")
    refused(requests.get(url + "/score", timeout=30), 405, "Method Not Allowed")
    still_serving(url)
    assert requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"] == "rm-one"


def test_a_body_that_stops_arriving_is_a_408(one):  # noqa: F811
    """A client stalled mid-body is answered and cut off, instead of holding its request forever."""
    url, scorer = one[0], one[1]
    app = build_app(scorer, Batcher(Lead(scorer)), name="rm-slow", body_timeout_s=0.5)
    with running(app) as slow:
        host, port = slow.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n" + b'{"items": [')
            answer = b"".join(iter(lambda: client.recv(65536), b"")).decode()  # until it closes
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"code":408' in answer and "stopped arriving for 0.5 s" in answer
        still_serving(slow)
    still_serving(url)
